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
    setUpSchemaBuilder();
    highlightCurrentStep();
  }

  /* The typed schema editor: a header line becomes one row per column (use, kind, categories);
     every change writes the schema's JSON into the textarea, which stays editable. */
  var SCHEMA_USES = [["feature", "feature"], ["label", "label"], ["skip", "leave out"]];
  var SCHEMA_KINDS = [["numeric", "numeric"], ["boolean", "boolean"], ["categorical", "categorical"]];

  function splitCsvLine(line) {
    var cells = [], cell = "", quoted = false;
    for (var i = 0; i < line.length; i += 1) {
      var c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') { cell += '"'; i += 1; }
        else if (c === '"') { quoted = false; }
        else { cell += c; }
      } else if (c === '"') { quoted = true; }
      else if (c === ",") { cells.push(cell.trim()); cell = ""; }
      else { cell += c; }
    }
    cells.push(cell.trim());
    return cells.filter(function (name) { return name !== ""; });
  }

  function listOf(text) {
    return text.split(",").map(function (part) { return part.trim(); }).filter(Boolean);
  }

  function selectOf(options, value, label) {
    var select = document.createElement("select");
    select.setAttribute("aria-label", label);
    options.forEach(function (option) {
      var element = document.createElement("option");
      element.value = option[0];
      element.textContent = option[1];
      select.appendChild(element);
    });
    select.value = value;
    return select;
  }

  function schemaRow(name, use, kind, categories) {
    var row = document.createElement("tr");
    row.setAttribute("data-column", name);
    var cell = document.createElement("td");
    cell.className = "mono";
    cell.textContent = name;
    row.appendChild(cell);
    var categoriesInput = document.createElement("input");
    categoriesInput.type = "text";
    categoriesInput.value = categories.join(", ");
    categoriesInput.setAttribute("aria-label", "Categories of " + name);
    [selectOf(SCHEMA_USES, use, "Use of " + name), selectOf(SCHEMA_KINDS, kind, "Kind of " + name), categoriesInput]
      .forEach(function (control) {
        var td = document.createElement("td");
        td.appendChild(control);
        row.appendChild(td);
      });
    return row;
  }

  function looksLikeIdentifier(name) {
    return /^(id|patient|patient_id|mrn|record|record_id|identifier)$/i.test(name);
  }

  function writeSchemaJson(builder, textarea) {
    var features = [], label = null;
    builder.querySelectorAll("#schema-columns tbody tr").forEach(function (row) {
      var controls = row.querySelectorAll("select, input");
      var name = row.getAttribute("data-column"), use = controls[0].value, kind = controls[1].value;
      controls[2].disabled = use !== "feature" || kind !== "categorical";
      if (use === "label") { label = name; }
      if (use !== "feature") { return; }
      var feature = {name: name, kind: kind};
      if (kind === "categorical") { feature.categories = listOf(controls[2].value); }
      features.push(feature);
    });
    var task = builder.querySelector("#schema-task").value;
    var schema = {features: features, label: label, task: task};
    if (task !== "regression") { schema.classes = listOf(builder.querySelector("#schema-classes").value); }
    textarea.value = JSON.stringify(schema, null, 2);
    describeSchema();
  }

  function fillBuilder(builder, rows, task, classes) {
    var body = builder.querySelector("#schema-columns tbody");
    body.textContent = "";
    rows.forEach(function (row) { body.appendChild(schemaRow(row.name, row.use, row.kind, row.categories)); });
    builder.querySelector("#schema-task").value = task;
    builder.querySelector("#schema-classes").value = classes.join(", ");
  }

  function readSchemaJson(builder, textarea) {
    var parsed;
    try { parsed = JSON.parse(textarea.value); } catch (error) { return false; }
    if (!parsed || !Array.isArray(parsed.features) || parsed.kind === "text") { return false; }
    var rows = parsed.features.map(function (feature) {
      return {name: feature.name, use: "feature", kind: feature.kind || "numeric", categories: feature.categories || []};
    });
    if (parsed.label) { rows.push({name: parsed.label, use: "label", kind: "numeric", categories: []}); }
    fillBuilder(builder, rows, parsed.task || "binary", parsed.classes || []);
    return true;
  }

  function setUpSchemaBuilder() {
    var builder = document.getElementById("schema-builder");
    var textarea = document.getElementById("id_data_schema");
    if (!builder || !textarea) { return; }
    builder.hidden = false;
    var rewrite = function () { writeSchemaJson(builder, textarea); };
    builder.querySelector("#schema-build").addEventListener("click", function () {
      var names = splitCsvLine(builder.querySelector("#schema-header").value);
      var rows = names.map(function (name, index) {
        var use = index === names.length - 1 ? "label" : (looksLikeIdentifier(name) ? "skip" : "feature");
        return {name: name, use: use, kind: "numeric", categories: []};
      });
      fillBuilder(builder, rows, builder.querySelector("#schema-task").value, listOf(builder.querySelector("#schema-classes").value));
      rewrite();
    });
    builder.querySelector("#schema-from-json").addEventListener("click", function () { readSchemaJson(builder, textarea); });
    builder.addEventListener("change", function (event) {
      if (event.target.id !== "schema-header") { rewrite(); }
    });
    builder.addEventListener("input", function (event) {
      if (event.target.type === "text" && event.target.id !== "schema-header") { rewrite(); }
    });
    readSchemaJson(builder, textarea);
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
