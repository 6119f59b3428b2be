/* fedhealth console: a federated query's page and form.
   On the form, shows only the fields the chosen kind reads. On a result, draws it with
   Chart.js (served by the project): a histogram's bins, Kaplan-Meier curves with the
   combined curve's 95% band, or each evaluated version's reliability curve. The tables on
   the page hold the same figures. */
(function () {
  "use strict";

  var PALETTE = ["#0b66c3", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0c8599", "#a87b00", "#495057"];

  /* --- the form: one kind's fields at a time --------------------------------------- */

  var form = document.querySelector("[data-query-form]");
  if (form) {
    var kind = form.querySelector("select[name=kind]");
    var showFields = function () {
      form.querySelectorAll(".query-field").forEach(function (field) {
        var kinds = (field.getAttribute("data-model-kinds") || "").split(" ");
        field.hidden = kinds.indexOf(kind.value) < 0;
      });
    };
    kind.addEventListener("change", showFields);
    showFields();
  }

  /* --- the result ------------------------------------------------------------------ */

  var canvas = document.getElementById("query-chart");
  var resultNode = document.getElementById("query-result-data");
  var specNode = document.getElementById("query-spec-data");
  if (!canvas || !resultNode || !specNode || typeof Chart === "undefined") { return; }
  var result = JSON.parse(resultNode.textContent);
  var spec = JSON.parse(specNode.textContent);

  function color(index) { return PALETTE[index % PALETTE.length]; }

  function parts() {
    var list = [["Combined", result.combined]];
    Object.keys(result.sites || {}).forEach(function (name) { list.push([name, result.sites[name]]); });
    return list;
  }

  function histogram() {
    var labels = [];
    for (var i = 0; i + 1 < spec.edges.length; i += 1) { labels.push(spec.edges[i] + "–" + spec.edges[i + 1]); }
    var datasets = parts().map(function (part, index) {
      return { label: part[0], data: part[1].counts, backgroundColor: color(index), hidden: index > 0 && parts().length > 4 };
    });
    return {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: { scales: { x: { title: { display: true, text: spec.column } }, y: { beginAtZero: true, title: { display: true, text: "rows" } } } }
    };
  }

  function steps(curve, key) {
    var points = [{ x: 0, y: 1 }];
    curve.times.forEach(function (time, i) { points.push({ x: time, y: curve[key][i] }); });
    return points;
  }

  function survival() {
    var datasets = [
      { label: "95% band (lower)", data: steps(result.combined, "lower"), stepped: "before", borderWidth: 0, pointRadius: 0, fill: false, borderColor: "rgba(11,102,195,0.2)" },
      { label: "95% band (upper)", data: steps(result.combined, "upper"), stepped: "before", borderWidth: 0, pointRadius: 0, fill: "-1", backgroundColor: "rgba(11,102,195,0.15)", borderColor: "rgba(11,102,195,0.2)" }
    ];
    parts().forEach(function (part, index) {
      datasets.push({ label: part[0], data: steps(part[1], "survival"), stepped: "before", pointRadius: 0, borderColor: color(index), borderWidth: index === 0 ? 3 : 1.5, fill: false });
    });
    return {
      type: "line",
      data: { datasets: datasets },
      options: {
        parsing: false,
        scales: { x: { type: "linear", title: { display: true, text: spec.time } }, y: { min: 0, max: 1, title: { display: true, text: "survival" } } },
        plugins: { legend: { labels: { filter: function (item) { return item.text.indexOf("95% band") < 0 || item.text.indexOf("upper") > 0; } } } }
      }
    };
  }

  function reliability() {
    var datasets = [{ label: "perfect calibration", data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], borderDash: [4, 4], borderColor: "#868e96", pointRadius: 0, fill: false }];
    Object.keys(result.versions).forEach(function (version, index) {
      var curve = result.versions[version].combined.reliability;
      if (!curve) { return; }
      datasets.push({
        label: (result.labels || {})[version] || "version id " + version,
        data: curve.predicted.map(function (p, i) { return { x: p, y: curve.observed[i] }; }),
        borderColor: color(index), backgroundColor: color(index), fill: false
      });
    });
    return {
      type: "line",
      data: { datasets: datasets },
      options: {
        parsing: false,
        scales: { x: { type: "linear", min: 0, max: 1, title: { display: true, text: "mean predicted probability" } }, y: { min: 0, max: 1, title: { display: true, text: "observed frequency" } } }
      }
    };
  }

  var builders = { histogram: histogram, quantiles: histogram, survival: survival, evaluation: reliability };
  var build = builders[spec.kind];
  if (build) {
    var config = build();
    config.options.animation = false;
    config.options.maintainAspectRatio = false;
    new Chart(canvas, config);
  }
})();
