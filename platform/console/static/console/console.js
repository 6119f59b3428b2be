/* fedhealth console: small progressive enhancements shared by every page.
   The pages work without it; no inline script, no data in markup except json_script. */
(function () {
  "use strict";

  /* Copy buttons: <button data-copy="#selector"> copies that element's text. */
  function setUpCopyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.querySelector(button.getAttribute("data-copy"));
        if (!source) { return; }
        var text = source.textContent.trim();
        var done = function () {
          var label = button.textContent;
          button.textContent = "Copied";
          window.setTimeout(function () { button.textContent = label; }, 1600);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
        } else {
          selectText(source);
        }
      });
    });
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  /* New study: show only the chosen strategy's parameters and the chosen model's fields. */
  function setUpStudyForm() {
    var form = document.getElementById("study-form");
    if (!form) { return; }
    var strategy = form.querySelector("#id_strategy");
    var kind = form.querySelector("#id_model_kind");
    var schema = form.querySelector("#id_data_schema");
    var showStrategy = function () {
      form.querySelectorAll("fieldset[data-strategy]").forEach(function (fieldset) {
        fieldset.hidden = fieldset.getAttribute("data-strategy") !== strategy.value;
      });
    };
    var showModelFields = function () {
      form.querySelectorAll("[data-model-kinds]").forEach(function (field) {
        field.hidden = field.getAttribute("data-model-kinds").split(" ").indexOf(kind.value) < 0;
      });
    };
    if (strategy) { strategy.addEventListener("change", showStrategy); showStrategy(); }
    if (kind) { kind.addEventListener("change", showModelFields); showModelFields(); }
    if (schema) { schema.addEventListener("input", describeSchema); describeSchema(); }
    highlightCurrentStep();
  }

  /* "6 input features → binary, 2 classes", read from the schema textarea as it is typed. */
  function describeSchema() {
    var target = document.getElementById("derived-shape");
    var schema = document.getElementById("id_data_schema");
    if (!target || !schema) { return; }
    var parsed;
    try { parsed = JSON.parse(schema.value); } catch (error) {
      target.textContent = "The data schema (step 2) is not valid JSON yet.";
      return;
    }
    if (!parsed || !Array.isArray(parsed.features)) {
      target.textContent = "The data schema (step 2) needs a list of features.";
      return;
    }
    var width = parsed.features.reduce(function (sum, feature) {
      var categories = feature && Array.isArray(feature.categories) ? feature.categories.length : 0;
      return sum + (feature && feature.kind === "categorical" ? categories : 1);
    }, 0);
    var task = parsed.task || "?";
    var classes = Array.isArray(parsed.classes) ? parsed.classes.length : "?";
    var outputs = task === "regression" ? "1 output" : classes + (classes === 1 ? " class" : " classes");
    target.textContent = "From the schema: " + width + " input feature" + (width === 1 ? "" : "s") +
      " → " + task + ", " + outputs + ".";
  }

  function highlightCurrentStep() {
    var links = document.querySelectorAll(".wizard__step");
    if (!links.length || !("IntersectionObserver" in window)) { return; }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (!entry.isIntersecting) { return; }
        var slug = entry.target.id.replace("step-", "");
        links.forEach(function (link) {
          link.classList.toggle("is-current", link.getAttribute("data-step") === slug);
        });
      });
    }, { rootMargin: "-20% 0px -70% 0px" });
    document.querySelectorAll("section.step").forEach(function (section) { observer.observe(section); });
  }

  /* <element data-reload-after="3">: reload the page after that many seconds, while it waits
     for others (a reload, unlike a meta refresh, also works on a URL with a #fragment). */
  function reloadWhileWaiting() {
    var waiting = document.querySelector("[data-reload-after]");
    if (!waiting) { return; }
    var seconds = Number(waiting.getAttribute("data-reload-after")) || 3;
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpCopyButtons();
    setUpStudyForm();
    reloadWhileWaiting();
  });
})();
