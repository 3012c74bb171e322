// The node page: latest values (polled) and one uPlot chart per channel over a chosen range.
(function () {
  "use strict";
  const {ago, number, unitOf, readJSON, getJSON, el} = window.meterlink;
  const charts = document.getElementById("charts");
  const status = document.getElementById("status");
  const nodeId = charts.dataset.node;
  const pollMs = Number(charts.dataset.poll || 3) * 1000;
  const units = readJSON("units");
  let data = readJSON("node-data");
  let skew = data.now - Date.now() / 1000;
  let range = charts.dataset.range;
  window.meterlinkCharts = {};  // channel -> uPlot instance (the browser tests read them)

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
  renderNode();
  loadCharts().catch(e => { status.textContent = "charts: " + e.message; });
  setInterval(poll, pollMs);
})();
