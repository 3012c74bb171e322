// The commands page: the send form's choices, and the recent downlinks, fetched again from
// /dash/downlinks.json every few seconds so that each node's answer shows as it arrives.
(function () {
  "use strict";
  const {ago, readJSON, el, poll} = window.meterlink;
  const table = document.getElementById("downlinks");
  const body = table.querySelector("tbody");
  const status = document.getElementById("status");
  const pollMs = Number(table.dataset.poll || 3) * 1000;
  const TEXT = 90;  // characters of a request or answer shown; all of it in the title
  // the request ids the page was redirected here after sending: marked until answered
  const fresh = new Set(document.getElementById("flash-ids") ? readJSON("flash-ids") : []);
  let data = readJSON("downlinks-data");
  let skew = data.now - Date.now() / 1000;  // server clock - ours

  function serverNow() { return Date.now() / 1000 + skew; }

  // choosing a target or a message in the form checks its radio button
  for (const field of document.querySelectorAll("[data-to], [data-what]")) {
    const radio = document.getElementById(
      field.dataset.to ? "to-" + field.dataset.to : "what-" + field.dataset.what);
    for (const event of ["focus", "change"]) {
      field.addEventListener(event, () => { radio.checked = true; });
    }
  }

  function short(text) {
    return text.length > TEXT ? text.slice(0, TEXT - 1) + "…" : text;
  }

  function pairs(obj, skip) {
    return Object.entries(obj || {}).filter(([k]) => !skip.includes(k))
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : String(v)));
  }

  function what(d) {
    const r = d.request || {};
    if (d.kind === "config") return "config v" + r.v + " " + JSON.stringify(r.patch || {});
    return [d.kind, ...pairs(r, ["cmd", "t"])].join(" ");
  }

  function answer(d) {
    const ack = d.ack || {};
    const full = JSON.stringify(ack);
    const after = d.acked_at == null ? "" : " after " + (d.acked_at - d.sent_at).toFixed(1) + " s";
    if (d.result === "ok") {
      const extra = pairs(ack, ["cmd"]).join(" ");
      return el("span", {title: "answered" + after + ": " + full},
                el("span", {class: "answer answer-ok"}, "ok"),
                extra ? el("span", {class: "muted"}, " " + short(extra)) : null);
    }
    if (d.result === "failed") {
      return el("span", {title: "answered" + after + ": " + full},
                el("span", {class: "answer answer-failed"}, "refused"),
                " " + short(String(ack.err || ack.text || "no reason given")));
    }
    if (d.result === "timeout") {
      return el("span", {class: "answer answer-timeout", title: "no answer by the deadline"},
                "timed out");
    }
    return el("span", {class: "answer answer-waiting"}, "waiting");
  }

  function left(d) {
    if (d.result !== "waiting") return new Date(d.deadline * 1000).toLocaleTimeString();
    return "in " + Math.max(0, Math.round(d.deadline - serverNow())) + " s";
  }

  function row(d) {
    const text = what(d);
    return el("tr", {"data-id": d.id, "data-node": d.node, "data-request": d.request_id || "",
                     "data-result": d.result,
                     class: fresh.has(d.request_id) && d.result === "waiting" ? "fresh" : ""},
      el("td", {}, el("a", {href: "/nodes/" + encodeURIComponent(d.node)}, d.node)),
      el("td", {class: "what", title: text}, el("code", {}, short(text))),
      el("td", {}, el("code", {}, d.request_id || "–")),
      el("td", {class: "ago", "data-t": d.sent_at,
                title: new Date(d.sent_at * 1000).toISOString()}, ago(serverNow() - d.sent_at)),
      el("td", {class: "deadline", title: new Date(d.deadline * 1000).toISOString()}, left(d)),
      el("td", {class: "answer-cell"}, answer(d)));
  }

  function render() {
    body.replaceChildren(...data.downlinks.map(row));
    document.getElementById("no-downlinks").hidden = data.downlinks.length > 0;
  }

  function tick() {  // the "12 s ago" and "in 40 s" cells, between fetches
    data.downlinks.forEach((d, i) => {
      const r = body.rows[i];
      if (!r) return;
      r.querySelector("td.ago").textContent = ago(serverNow() - d.sent_at);
      r.querySelector("td.deadline").textContent = left(d);
    });
  }

  render();
  poll("/dash/downlinks.json", pollMs, (answer) => {
    data = answer;
    skew = data.now - Date.now() / 1000;
    render();
  }, status, table);
  setInterval(tick, 1000);
})();
