// The node page: latest values, gaps and status history (polled), one uPlot chart per channel
// over a chosen range, and each meter total's consumption per day (bars and a table).
(function () {
  "use strict";
  const {ago, number, unitOf, readJSON, getJSON, el} = window.meterlink;
  const charts = document.getElementById("charts");
  const status = document.getElementById("status");
  const nodeId = charts.dataset.node;
  const pollMs = Number(charts.dataset.poll || 3) * 1000;
  const consumption = document.getElementById("consumption");
  const CONSUMPTION_EVERY_MS = 60 * 1000;  // a day's use moves slowly: not on every poll
  const GAPS_SHOWN = 100;
  const DAY = 86400;
  const units = readJSON("units");
  let data = readJSON("node-data");
  let skew = data.now - Date.now() / 1000;
  let range = charts.dataset.range;
  window.meterlinkCharts = {};  // channel -> uPlot instance (the browser tests read them)
  window.meterlinkConsumption = {};  // meter channel -> its bar chart

  function serverNow() { return Date.now() / 1000 + skew; }

  function renderNode() {
    const n = data.node;
    const state = document.getElementById("state");
    state.textContent = n.state || "unknown";
    state.className = "state state-" + (n.state || "unknown");
    const facts = [
      ["Last seen", n.last_seen == null ? "never" : ago(serverNow() - n.last_seen)],
      ["Battery", n.battery_mv == null ? "–" : number(n.battery_mv / 1000) + " V"],
      ["RSSI", n.rssi == null ? "–" : n.rssi + " dBm"],
      ["Queue / drops", (n.q == null ? "–" : n.q) + " / " + (n.qd == null ? "–" : n.qd)],
      ["Firmware", n.fw || "–"], ["Board", n.board || "–"],
      ["Readings accepted", n.accepted == null ? "–" : n.accepted],
      ["Missing (gaps)", n.missing], ["Alarms", (n.alarms || []).join(", ") || "none"]];
    document.getElementById("facts").replaceChildren(
      ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
    const rows = Object.entries(n.last_values || {}).sort(([a], [b]) => a.localeCompare(b))
      .map(([label, x]) => {
        const [unit, factor] = unitOf(units, label);
        return el("tr", {"data-channel": label}, el("td", {}, label),
                  el("td", {class: "num"}, typeof x.v === "number" ? number(x.v * factor) : String(x.v)),
                  el("td", {}, unit),
                  el("td", {title: new Date(x.t * 1000).toISOString()}, ago(serverNow() - x.t)));
      });
    document.querySelector("#latest tbody").replaceChildren(...rows);
    renderGaps(n);
    renderEvents(data.events || []);
  }

  function when(t) {  // "5 min ago", the exact time as its title
    return el("td", {class: "ago", "data-t": t, title: new Date(t * 1000).toISOString()},
              ago(serverNow() - t));
  }

  function renderGaps(n) {
    const gaps = n.gaps || [];
    const total = document.getElementById("gaps-total");
    total.textContent = !gaps.length ? "none" :
      n.missing + " sequence number" + (n.missing === 1 ? "" : "s") +
      " missing, in " + gaps.length + " range" + (gaps.length === 1 ? "" : "s") +
      (gaps.length > GAPS_SHOWN ? " (the first " + GAPS_SHOWN + " below)" : "");
    const table = document.getElementById("gaps");
    table.hidden = !gaps.length;
    table.querySelector("tbody").replaceChildren(...gaps.slice(0, GAPS_SHOWN).map(([a, b]) =>
      el("tr", {"data-first": a}, el("td", {class: "num"}, a), el("td", {class: "num"}, b),
         el("td", {class: "num"}, b - a + 1))));
  }

  function renderEvents(events) {
    document.querySelector("#events tbody").replaceChildren(...events.map((e, i) =>
      el("tr", {"data-i": i, class: "event-" + e.event}, when(e.at), el("td", {}, e.event),
         el("td", {}, e.detail || ""))));
    document.getElementById("events-empty").hidden = events.length > 0;
  }

  // each meter total's use per day: bars (uPlot) and a table, from the API's differences of
  // totals (never summed deltas); a day without a total at its end has no bar
  async function loadConsumption() {
    const names = Object.keys(data.node.last_values || {})
      .filter(c => /^(water_volume|gas_volume|heat_energy)(:|$)/.test(c));
    const part = document.getElementById("consumption-part");
    part.hidden = charts.dataset.history !== "yes" || !names.length;
    if (part.hidden) return;
    const reply = await getJSON("/dash/nodes/" + encodeURIComponent(nodeId) + "/consumption.json");
    for (const chart of Object.values(window.meterlinkConsumption)) chart.destroy();
    window.meterlinkConsumption = {};
    consumption.replaceChildren();
    for (const name of Object.keys(reply.meters).sort()) {
      const days = reply.meters[name];
      const [unit, factor] = unitOf(units, name);
      const plot = el("div", {class: "meter-chart"});
      const rows = days.slice().reverse().map(([t, v]) => el("tr", {"data-day": t},
        el("td", {}, new Date(t * 1000).toISOString().slice(0, 10)),
        el("td", {class: "num"}, number(v * factor))));
      const sum = days.reduce((a, d) => a + d[1], 0) * factor;
      const table = el("table", {class: "meter-days"},
        el("thead", {}, el("tr", {}, el("th", {}, "Day (UTC)"),
                           el("th", {}, name + (unit ? " (" + unit + ")" : "")))),
        el("tbody", {}, ...rows),
        el("tfoot", {}, el("tr", {}, el("th", {}, "Total"),
                           el("td", {class: "num"}, number(sum)))));
      const box = el("div", {class: "meter", "data-channel": name}, plot,
                     el("div", {class: "meter-table"}, table));
      consumption.append(box);
      if (!days.length) {
        plot.append(el("p", {class: "empty"}, "No day's use in this span yet: a day needs the " +
                       "meter's total at its end and at the end of a day before."));
        continue;
      }
      if (typeof uPlot === "undefined") continue;  // the table only (charts-off says why)
      const chart = new uPlot({
        title: name + " per day" + (unit ? " (" + unit + ")" : ""),
        width: Math.max(300, plot.clientWidth), height: 200,
        scales: {x: {time: true, range: [reply.from, reply.from + reply.days * DAY]},
                 y: {range: (u, lo, hi) => [Math.min(0, lo), Math.max(0, hi) * 1.1 || 1]}},
        series: [{}, {label: "used", stroke: "#1f6feb", width: 1, fill: "rgba(31,111,235,0.45)",
                      paths: uPlot.paths.bars({size: [0.7, 40]}), points: {show: false},
                      value: (u, v) => v == null ? "–" : number(v) + (unit ? " " + unit : "")}],
        axes: [{}, {size: 60}],
      }, [days.map(d => d[0] + DAY / 2), days.map(d => d[1] * factor)], plot);
      window.meterlinkConsumption[name] = chart;
    }
    consumption.dataset.loads = String(Number(consumption.dataset.loads || 0) + 1);
  }

  async function loadCharts() {
    if (charts.dataset.history !== "yes" || typeof uPlot === "undefined") {
      charts.dataset.ready = range;
      return;
    }
    const reply = await getJSON("/dash/nodes/" + encodeURIComponent(nodeId) +
                                "/series.json?range=" + range);
    for (const chart of Object.values(window.meterlinkCharts)) chart.destroy();
    window.meterlinkCharts = {};
    charts.replaceChildren();
    const names = Object.keys(reply.series).filter(c => !c.startsWith("alarms")).sort();
    if (!names.length) charts.append(el("p", {class: "notice"}, "No values in this range."));
    for (const name of names) {
      const [unit, factor] = unitOf(units, name);
      const points = reply.series[name];
      const box = el("div", {class: "chart", "data-channel": name});
      charts.append(box);
      const opts = {
        title: name + (unit ? " (" + unit + ")" : ""), width: Math.max(300, box.clientWidth),
        height: 200,
        scales: {x: {time: true, range: [reply.from, reply.to]}},
        series: [{}, {label: name, stroke: "#1f6feb", width: 2, fill: "rgba(31,111,235,0.08)",
                      points: {show: points.length < 60}, spanGaps: false,
                      value: (u, v) => v == null ? "–" : number(v) + (unit ? " " + unit : "")}],
        axes: [{}, {size: 60}],
      };
      const chart = new uPlot(opts, [points.map(p => p[0]), points.map(p => p[1] * factor)], box);
      window.meterlinkCharts[name] = chart;
    }
    charts.dataset.ready = range;
  }

  async function poll() {
    try {
      data = await getJSON("/dash/nodes/" + encodeURIComponent(nodeId) + ".json");
      skew = data.now - Date.now() / 1000;
      renderNode();
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.classList.remove("stale");
    } catch (e) {
      status.textContent = "not updated: " + e.message;
      status.classList.add("stale");
    }
  }

  for (const button of document.querySelectorAll(".ranges button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of document.querySelectorAll(".ranges button")) b.classList.toggle("on", b === button);
      history.replaceState(null, "", "?range=" + range);
      charts.dataset.ready = "";
      loadCharts().catch(e => { status.textContent = "charts: " + e.message; });
    });
  }
  function refreshConsumption() {
    loadConsumption().catch(e => { status.textContent = "consumption: " + e.message; });
  }

  renderNode();
  loadCharts().catch(e => { status.textContent = "charts: " + e.message; });
  refreshConsumption();
  setInterval(poll, pollMs);
  setInterval(refreshConsumption, CONSUMPTION_EVERY_MS);
  setInterval(() => {  // the "5 min ago" cells, between polls
    for (const cell of document.querySelectorAll("#events td.ago")) {
      cell.textContent = ago(serverNow() - Number(cell.dataset.t));
    }
  }, 1000);
})();
