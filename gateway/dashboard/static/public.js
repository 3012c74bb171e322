// The public environment page (gateway/dashboard/public.py): the current values per district
// (the server renders the tables; this keeps them current) and a uPlot chart per measure over
// 24 h or 30 days, all from /public/data.json, polled every 60 s. No cookie is sent.
(function () {
  "use strict";
  const {ago, number, readJSON, el} = window.meterlink;
  const root = document.getElementById("public");
  const status = document.getElementById("status");
  const pollMs = Number(root.dataset.poll || 60) * 1000;
  const COLOURS = {air: "#8250df", weather: "#1f6feb", water: "#0a7d6e"};
  let data = readJSON("public-data");
  let range = data.range;
  window.meterlinkCharts = {};  // "district/measure" -> uPlot (the browser tests read them)

  function districtOf(section) {
    return data.districts.find(d => d.name === section.dataset.district);
  }

  // the quantities of a district, in the table's order
  function measures(d) {
    return d.themes.flatMap(theme => theme.quantities.map(q => [theme, q]));
  }

  // the same districts and measures as the page: else it is rebuilt by the server
  function sameShape() {
    const sections = Array.from(root.querySelectorAll("section.district"));
    if (sections.length !== data.districts.length) return false;
    return sections.every(s => {
      const d = districtOf(s);
      const keys = Array.from(s.querySelectorAll("tbody tr"), r => r.dataset.key);
      return d && keys.join() === measures(d).map(([, q]) => q.key).join();
    });
  }

  function renderTables() {
    for (const section of root.querySelectorAll("section.district")) {
      const d = districtOf(section);
      for (const [theme, q] of measures(d)) {
        const row = section.querySelector('tbody tr[data-key="' + q.key + '"]');
        const updated = row.cells[4];
        row.cells[2].textContent = number(q.value);
        row.cells[3].textContent = q.unit;
        const tag = q.stale ? [el("span", {class: "stale-tag"}, "stale"), " "] : [];
        updated.replaceChildren(...tag, "updated " + ago(data.now - q.t));
        row.className = "theme-" + theme.key + (q.stale ? " stale" : "");
      }
    }
  }

  function renderCharts() {
    for (const chart of Object.values(window.meterlinkCharts)) chart.destroy();
    window.meterlinkCharts = {};
    if (root.dataset.charts !== "yes" || typeof uPlot === "undefined") {
      root.dataset.ready = range;
      return;
    }
    for (const section of root.querySelectorAll("section.district")) {
      const d = districtOf(section);
      const box = section.querySelector(".charts");
      box.replaceChildren();
      for (const [theme, q] of measures(d)) {
        const chartBox = el("div", {class: "chart", "data-key": q.key});
        box.append(chartBox);
        if (!q.series.length) {
          chartBox.append(el("p", {class: "empty"}, q.title + ": no values in this range."));
          continue;
        }
        const unit = q.unit ? " " + q.unit : "";
        const opts = {
          title: q.title + (q.unit ? " (" + q.unit + ")" : ""),
          width: Math.max(280, chartBox.clientWidth), height: 180,
          scales: {x: {time: true, range: [data.from, data.to]}},
          series: [{}, {label: q.title, stroke: COLOURS[theme.key] || "#1f6feb", width: 2,
                        points: {show: q.series.length < 60}, spanGaps: false,
                        value: (u, v) => v == null ? "–" : number(v) + unit}],
          axes: [{}, {size: 60}],
        };
        window.meterlinkCharts[d.name + "/" + q.key] = new uPlot(
          opts, [q.series.map(p => p[0]), q.series.map(p => p[1])], chartBox);
      }
    }
    root.dataset.ready = range;
  }

  async function load() {
    const reply = await fetch("/public/data.json?range=" + range,
                              {credentials: "omit", headers: {Accept: "application/json"}});
    if (!reply.ok) throw new Error(reply.status);
    data = await reply.json();
    if (!sameShape()) {
      location.reload();
      return;
    }
    renderTables();
    renderCharts();
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.classList.remove("stale");
  }

  function refresh() {
    load().catch(e => {
      status.textContent = "not updated: " + e.message;
      status.classList.add("stale");
    });
  }

  for (const button of document.querySelectorAll(".ranges button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of document.querySelectorAll(".ranges button")) {
        b.classList.toggle("on", b === button);
      }
      history.replaceState(null, "", "?range=" + range);
      root.dataset.ready = "";
      refresh();
    });
  }
  renderCharts();
  setInterval(refresh, pollMs);
})();
