/* fedhealth console: the live job page.
   Reads the first snapshot from the json_script block, then polls live.json every two
   seconds while the job can still change, and redraws the charts (Chart.js, served by the
   project) and the tables. Text goes in through textContent only. */
(function () {
  "use strict";

  var POLL_MILLISECONDS = 2000;
  var PALETTE = ["#0b66c3", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0c8599", "#a87b00", "#495057"];
  var TONES = {
    running: "info", collecting: "info", aggregating: "info", open: "info",
    completed: "success", closed: "success", approved: "success", online: "success",
    paused: "warning", pending: "warning",
    cancelled: "danger", failed: "danger", declined: "danger", revoked: "danger"
  };
  var LABELS = { pending: "Not answered" };
  /* The server renders times in UTC ("25 Nov, 03:42"); so does this page's script. */
  var DATE_FORMAT = new Intl.DateTimeFormat("en-GB", {
    day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", timeZone: "UTC"
  });
  var TIME_FORMAT = new Intl.DateTimeFormat("en-GB", {
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZone: "UTC"
  });

  var root = document.getElementById("job-live");
  var snapshot = document.getElementById("job-live-data");
  if (!root || !snapshot) { return; }
  var liveUrl = root.getAttribute("data-live-url");
  var charts = {};
  var current = JSON.parse(snapshot.textContent);
  var timer = null;

  /* --- small helpers ---------------------------------------------------------------- */

  function element(tag, options, children) {
    var node = document.createElement(tag);
    options = options || {};
    if (options.className) { node.className = options.className; }
    if (options.text !== undefined && options.text !== null) { node.textContent = String(options.text); }
    if (options.title) { node.title = options.title; }
    Object.keys(options.data || {}).forEach(function (key) { node.setAttribute("data-" + key, options.data[key]); });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function badge(state, testid) {
    var data = { state: state };
    if (testid) { data.testid = testid; }
    return element("span", { className: "badge badge--" + (TONES[state] || "neutral"), text: LABELS[state] || capitalize(state), data: data });
  }

  function capitalize(text) {
    text = String(text).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function formatMetric(value) { return typeof value === "number" ? value.toFixed(4) : "–"; }

  function formatDuration(seconds) {
    if (typeof seconds !== "number") { return "–"; }
    if (seconds < 60) { return seconds.toFixed(1) + " s"; }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) { return minutes + " min " + Math.floor(seconds % 60) + " s"; }
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function formatAgo(iso) {
    if (!iso) { return "never"; }
    var seconds = Math.max(0, Math.round((Date.parse(current.server_time) - Date.parse(iso)) / 1000));
    if (seconds < 60) { return seconds + " s ago"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min ago"; }
    if (seconds < 86400) { return Math.floor(seconds / 3600) + " h ago"; }
    return DATE_FORMAT.format(new Date(iso));
  }

  function metricLabel(name) {
    var special = { r2: "R²", mse: "MSE", mae: "MAE", roc_auc: "ROC AUC" };
    return special[name] || (name.charAt(0).toUpperCase() + name.slice(1)).replace(/_/g, " ");
  }

  function cell(text, className) { return element("td", { text: text, className: className }); }

  function chips(metrics) {
    var td = element("td", { className: "metrics-cell" });
    var names = Object.keys(metrics || {});
    if (!names.length) { td.appendChild(element("span", { className: "muted", text: "–" })); }
    names.forEach(function (name) { td.appendChild(element("span", { className: "chip", text: name + " " + formatMetric(metrics[name]) })); });
    return td;
  }

  function replaceRows(tbodyId, rows, emptyText, columns) {
    var tbody = document.getElementById(tbodyId);
    if (!tbody) { return; }
    tbody.textContent = "";
    if (!rows.length) {
      var td = element("td", { className: "empty", text: emptyText });
      td.colSpan = columns;
      tbody.appendChild(element("tr", { className: "placeholder" }, [td]));
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  /* --- the job's header, progress and controls ------------------------------------- */

  function renderJob(job) {
    var warnings = document.querySelector("[data-testid='launch-warnings']");
    if (warnings) { warnings.hidden = job.state !== "draft"; }
    var state = document.getElementById("job-state");
    if (state) { state.textContent = ""; state.appendChild(badge(job.state, "job-state")); }
    document.querySelectorAll("[data-action]").forEach(function (control) {
      control.hidden = job.actions.indexOf(control.getAttribute("data-action")) < 0;
    });
    var progress = document.getElementById("job-progress");
    if (progress) { progress.max = job.num_rounds; progress.value = job.rounds_done; }
    setText("job-progress-text", job.rounds_done + " / " + job.num_rounds + " rounds");
    var roundText = job.in_final_evaluation ? "Final evaluation" :
      (job.current_round ? "Round " + job.current_round + " of " + job.num_rounds : "Not started");
    if (job.state === "completed") { roundText = "Completed"; }
    setText("job-round-text", roundText);
    if (job.privacy && job.privacy.epsilon_budget) {
      setText("job-epsilon", "epsilon " + Number(job.privacy.epsilon_spent || 0).toFixed(3) + " of " +
        job.privacy.epsilon_budget + (job.privacy.training_stopped_after !== null ? " · budget reached" : ""));
    }
    var failure = document.getElementById("job-failure");
    if (failure) { failure.textContent = job.failure_reason || ""; failure.hidden = !job.failure_reason; }
    setText("job-started", job.started_at ? DATE_FORMAT.format(new Date(job.started_at)) : "–");
    setText("job-finished", job.finished_at ? "ended " + DATE_FORMAT.format(new Date(job.finished_at)) : "");
    var live = document.getElementById("live-status");
    if (live) {
      live.hidden = false;
      live.classList.toggle("is-final", !!job.terminal);
      live.textContent = (job.terminal ? "Final · " : "Live · updated ") + TIME_FORMAT.format(new Date(current.server_time)) + " UTC";
    }
  }

  /* Sizes as the server's template shows them (Django's filesizeformat: binary units). */
  function formatBytes(bytes) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var value = bytes || 0;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? String(value) : value.toFixed(1)) + "\u00a0" + units[unit];
  }

  function setText(id, text) {
    var node = document.getElementById(id);
    if (node) { node.textContent = text; }
  }

  /* --- tables ------------------------------------------------------------------------ */

  function roundRow(round, longest) {
    var stateCell = element("td", {}, [badge(round.state, "round-state")]);
    if (round.failure_reason) { stateCell.appendChild(element("div", { className: "muted small", text: round.failure_reason })); }
    var dropouts = element("td", { className: "num", text: round.dropouts });
    if (round.dropout_sites.length) { dropouts.appendChild(element("div", { className: "muted small", text: round.dropout_sites.join(", ") })); }
    var bar = element("progress", { className: "bar" });
    bar.max = longest || 1;
    bar.value = round.duration_seconds;
    var duration = element("td", { className: "duration-cell" }, [bar, element("span", { className: "small", text: formatDuration(round.duration_seconds) })]);
    return element("tr", { data: { testid: "round-row", round: round.number } }, [
      cell(round.label, "strong nowrap"),
      stateCell,
      cell(round.received + " / " + round.expected_updates, "num"),
      dropouts,
      element("td", { className: "num nowrap", text: formatBytes(round.bytes_up) + " / " + formatBytes(round.bytes_down), data: { testid: "round-traffic" } }),
      duration,
      cell(formatMetric(round.summary.global_quality), "num mono"),
      cell(formatMetric(round.summary.local_quality), "num mono"),
      cell(formatMetric(round.summary.global_loss), "num mono")
    ]);
  }

  function siteRow(site) {
    var name = element("td", { className: "strong", text: site.name });
    if (site.refused) { name.appendChild(element("div", { className: "muted small", text: "refused: " + site.refusal_reason })); }
    return element("tr", { data: { testid: "site-row" } }, [
      name,
      element("td", {}, [badge(site.decision)]),
      element("td", {}, [badge(site.agent_online ? "online" : "offline")]),
      cell(site.updates_sent, "num"),
      cell(formatAgo(site.last_update_at)),
      chips(site.latest_metrics)
    ]);
  }

  function modelRow(model) {
    var provenance = element("td");
    if (model.updates.length) {
      var list = element("ul", { className: "plain-list small" }, model.updates.map(function (update) {
        return element("li", { text: update.institution + " · " + update.sha256_short + " · " + update.num_examples + " examples" });
      }));
      var hidden = model.num_updates - model.updates.length;
      var text = model.num_updates + " update" + (model.num_updates === 1 ? "" : "s") + (hidden > 0 ? " (yours shown)" : "");
      var summary = element("summary", { text: text });
      provenance.appendChild(element("details", {}, [summary, list]));
    } else {
      provenance.appendChild(element("span", { className: "muted", text: "–" }));
    }
    var link = element("a", { className: "button button--secondary button--small", text: "Weights", data: { testid: "download-model" } });
    link.href = model.download_url;
    link.setAttribute("download", "");
    var bundle = element("a", { className: "button button--secondary button--small", text: "Bundle", title: "weights, schema, scaling, metrics and a model card", data: { testid: "download-bundle" } });
    bundle.href = model.bundle_url;
    bundle.setAttribute("download", "");
    var number = element("td", { className: "num strong", text: String(model.number) });
    if (model.best) {
      number.appendChild(document.createTextNode(" "));
      number.appendChild(element("span", { className: "badge badge--success", text: "best", title: "lowest loss on the sites' validation rows", data: { testid: "best-version" } }));
    }
    return element("tr", { data: { testid: "model-row", version: model.number } }, [
      number,
      element("td", { className: "mono", text: model.sha256_short, title: model.sha256 }),
      cell(model.parent_number === null ? "–" : model.parent_number, "num"),
      cell(model.made_by_round === null ? "–" : model.made_by_round, "num"),
      cell(model.strategy, "mono"),
      provenance,
      chips(model.metrics),
      cell(formatSize(model.size), "num nowrap"),
      element("td", { className: "actions" }, [link, document.createTextNode(" "), bundle])
    ]);
  }

  function formatSize(size) {
    if (size < 1024) { return size + " bytes"; }
    if (size < 1024 * 1024) { return (size / 1024).toFixed(1) + " KB"; }
    return (size / 1024 / 1024).toFixed(1) + " MB";
  }

  function renderTables(data) {
    replaceRows("rounds-body", data.rounds.map(function (round) { return roundRow(round, data.longest_round_seconds); }),
      "No round yet: the first opens when the job starts.", 9);
    replaceRows("sites-body", data.sites.map(siteRow), "No site.", 6);
    replaceRows("models-body", data.models.map(modelRow), "The initial model is written when the job starts.", 9);
  }

  /* --- charts ------------------------------------------------------------------------ */

  function roundLabels(rounds) {
    return rounds.map(function (round) { return round.kind === "evaluate" ? "Final" : String(round.number); });
  }

  function line(label, values, color, dashed) {
    return {
      label: label, data: values, borderColor: color, backgroundColor: color, borderWidth: 2,
      // Straight segments: a curve would show values between rounds that nobody measured.
      pointRadius: 3, pointHoverRadius: 5, tension: 0, spanGaps: true, borderDash: dashed ? [6, 4] : []
    };
  }

  function chartOptions(yTitle) {
    return {
      responsive: true, maintainAspectRatio: false, animation: false, normalized: true,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12, usePointStyle: true } } },
      scales: {
        x: { title: { display: true, text: "Round" }, grid: { display: false } },
        y: { title: { display: true, text: yTitle }, grace: "5%" }
      }
    };
  }

  function hasValues(datasets) {
    return datasets.some(function (set) { return set.data.some(function (value) { return typeof value === "number"; }); });
  }

  /* Without a value yet, the axis shows 0 to 1 instead of Chart.js's padded -0.2 to 1.2. */
  function fitEmptyAxis(options, datasets) {
    var empty = !hasValues(datasets);
    options.scales.y.min = empty ? 0 : undefined;
    options.scales.y.max = empty ? 1 : undefined;
    return options;
  }

  function draw(id, labels, datasets, yTitle) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets = datasets;
      charts[id].options.scales.y.title.text = yTitle;
      fitEmptyAxis(charts[id].options, datasets);
      charts[id].update("none");
      return;
    }
    var options = fitEmptyAxis(chartOptions(yTitle), datasets);
    charts[id] = new window.Chart(canvas, { type: "line", data: { labels: labels, datasets: datasets }, options: options });
  }

  function summaries(rounds, key) {
    return rounds.map(function (round) { var value = round.summary[key]; return typeof value === "number" ? value : null; });
  }

  /* A site's answer to the final evaluation rates the final (global) model. */
  function siteMetric(answer, name) {
    if (answer.kind === "evaluate") {
      return name.indexOf("global_") === 0 ? answer.metrics[name.slice(7)] : undefined;
    }
    return answer.metrics[name];
  }

  function siteMetricNames(sites) {
    var names = {};
    sites.forEach(function (site) {
      site.rounds.forEach(function (answer) {
        Object.keys(answer.metrics).forEach(function (name) {
          names[answer.kind === "evaluate" ? "global_" + name : name] = true;
        });
      });
    });
    return Object.keys(names).sort();
  }

  function updateMetricChoice(sites, preferred) {
    var select = document.getElementById("site-metric");
    if (!select) { return preferred; }
    var names = siteMetricNames(sites);
    if (!names.length) { names = [preferred]; }
    var chosen = select.value && names.indexOf(select.value) >= 0 ? select.value : (names.indexOf(preferred) >= 0 ? preferred : names[0]);
    var existing = Array.prototype.map.call(select.options, function (option) { return option.value; });
    if (existing.join() !== names.join()) {
      select.textContent = "";
      names.forEach(function (name) {
        var label = name.replace(/^global_/, "global ").replace(/^local_/, "local ").replace(/_/g, " ");
        select.appendChild(element("option", { text: label })).value = name;
      });
    }
    select.value = chosen;
    return chosen;
  }

  function renderCharts(data) {
    if (!window.Chart) { return; }
    var labels = roundLabels(data.rounds);
    var quality = data.charts.quality;
    var loss = data.charts.loss;
    draw("chart-quality", labels, [
      line("global " + metricLabel(quality).toLowerCase(), summaries(data.rounds, "global_quality"), PALETTE[0], false),
      line("local " + metricLabel(quality).toLowerCase(), summaries(data.rounds, "local_quality"), PALETTE[1], true)
    ], metricLabel(quality));
    draw("chart-loss", labels, [
      line("global " + metricLabel(loss).toLowerCase(), summaries(data.rounds, "global_loss"), PALETTE[0], false),
      line("local " + metricLabel(loss).toLowerCase(), summaries(data.rounds, "local_loss"), PALETTE[1], true)
    ], metricLabel(loss));
    var metric = updateMetricChoice(data.sites, "global_" + quality);
    var siteLines = data.sites.map(function (site, index) {
      var byRound = {};
      site.rounds.forEach(function (answer) { byRound[answer.round] = siteMetric(answer, metric); });
      var values = data.rounds.map(function (round) {
        var value = byRound[round.number];
        return typeof value === "number" ? value : null;
      });
      return line(site.name, values, PALETTE[index % PALETTE.length], false);
    });
    draw("chart-sites", labels, siteLines, metric.replace(/_/g, " "));
  }

  /* --- polling ----------------------------------------------------------------------- */

  /* A message about the last action ("Job 3 started") is stale once the job's state moves on. */
  function clearStaleMessages(previous, job) {
    if (!previous || previous.job.state === job.state) { return; }
    document.querySelectorAll(".messages").forEach(function (box) { box.remove(); });
  }

  function render(data) {
    clearStaleMessages(current, data.job);
    current = data;
    renderJob(data.job);
    renderTables(data);
    renderCharts(data);
  }

  function schedule() {
    window.clearTimeout(timer);
    if (!current.job.terminal && !document.hidden) { timer = window.setTimeout(poll, POLL_MILLISECONDS); }
  }

  function poll() {
    window.fetch(liveUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!response.ok) { throw new Error("live.json answered " + response.status); }
        return response.json();
      })
      .then(function (data) { render(data); })
      .catch(function () { /* a missed poll is retried by the next one */ })
      .then(schedule);
  }

  function start() {
    if (window.Chart) {
      window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      window.Chart.defaults.color = "#5c6675";
      window.Chart.defaults.borderColor = "#e9ecf0";
    }
    var select = document.getElementById("site-metric");
    if (select) { select.addEventListener("change", function () { renderCharts(current); }); }
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { poll(); } });
    render(current);
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
