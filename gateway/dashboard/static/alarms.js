// The alarms page: two tables drawn from /dash/alarms.json, fetched every few seconds.
// A row is rebuilt only when its alarm changed, and an unacknowledged row keeps its form (and
// the note being typed in it, and the focus) across refreshes.
(function () {
  "use strict";
  const {ago, readJSON, el, poll} = window.meterlink;
  const tables = {attention: document.getElementById("attention"),
                  recent: document.getElementById("recent")};
  const first = tables.attention;
  const status = document.getElementById("status");
  const pollMs = Number(first.dataset.poll || 3) * 1000;
  const csrf = first.dataset.csrf;
  const noteLimit = first.dataset.noteLimit || "500";
  const rows = new Map();  // alarm id -> {tr, key}: the rows drawn, whichever table they are in
  let data = readJSON("alarms-data");
  let skew = data.now - Date.now() / 1000;  // server clock - ours

  function serverNow() { return Date.now() / 1000 + skew; }

  function exact(t) { return new Date(t * 1000).toLocaleString(); }

  // "5 min ago", the exact time as its title; the tick keeps it current
  function when(t) {
    return el("span", {class: "ago", "data-t": t, title: exact(t)}, ago(serverNow() - t));
  }

  function nodeCell(a) {
    if (a.node.startsWith("-")) return el("td", {title: a.node}, "gateway");
    return el("td", {}, el("a", {href: "/nodes/" + encodeURIComponent(a.node)}, a.node));
  }

  function ackForm(a) {
    return el("form", {method: "post", action: "/alarms/" + a.id + "/ack", class: "ack"},
      el("input", {type: "hidden", name: "csrf", value: csrf}),
      el("input", {type: "text", name: "note", maxlength: noteLimit, autocomplete: "off",
                   placeholder: "Note (optional)", "aria-label": "Note on " + a.alarm + " at " + a.node}),
      el("button", {type: "submit"}, "Acknowledge"));
  }

  function ackCell(a) {
    if (a.acked_at == null) return el("td", {class: "ack"}, ackForm(a));
    return el("td", {class: "ack done"},
      el("span", {class: "by"}, a.acked_by), " · ", when(a.acked_at),
      a.ack_note ? el("div", {class: "note"}, a.ack_note) : null);
  }

  function cells(a) {
    return [
      nodeCell(a),
      el("td", {class: "name"}, a.alarm),
      el("td", {class: "detail"}, a.detail || "–"),
      el("td", {}, when(a.raised_at)),
      a.cleared_at == null ? el("td", {}, el("span", {class: "badge"}, "active"))
                           : el("td", {}, when(a.cleared_at)),
    ];
  }

  function row(a) {
    const key = JSON.stringify(a);
    let r = rows.get(a.id);
    if (!r) {
      r = {tr: el("tr", {"data-id": a.id}), key: null};
      rows.set(a.id, r);
    }
    if (r.key !== key) {
      const fresh = cells(a);
      if (a.acked_at == null && r.tr.querySelector("form.ack")) {
        // still to acknowledge: the other cells change, the form's cell stays in place
        fresh.forEach((td, i) => r.tr.replaceChild(td, r.tr.cells[i]));
      } else {
        r.tr.replaceChildren(...fresh, ackCell(a));
      }
      r.tr.className = a.active ? "active" : "cleared";
      r.key = key;
    }
    return r.tr;
  }

  // puts `trs` in `body` in that order, moving nothing when the order is already right
  // (a moved row would lose the focus of the note being typed: given back below)
  function place(body, trs) {
    const old = Array.from(body.children);
    if (old.length === trs.length && old.every((tr, i) => tr === trs[i])) return;
    const focused = document.activeElement;
    const caret = focused && focused.tagName === "INPUT" ?
      [focused.selectionStart, focused.selectionEnd] : null;
    body.replaceChildren(...trs);
    if (caret && focused.isConnected && document.activeElement !== focused) {
      focused.focus();
      focused.setSelectionRange(caret[0], caret[1]);
    }
  }

  function render() {
    const drawn = new Set();
    for (const [name, table] of Object.entries(tables)) {
      const list = data[name] || [];
      place(table.tBodies[0], list.map(a => { drawn.add(a.id); return row(a); }));
      document.getElementById(name + "-count").textContent = list.length;
      document.getElementById(name + "-empty").hidden = list.length > 0;
      document.getElementById(name + "-cut").hidden = !(data.cut && data.cut[name]);
    }
    for (const id of Array.from(rows.keys())) if (!drawn.has(id)) rows.delete(id);
  }

  function tick() {  // the "5 min ago" texts, between polls
    for (const span of document.querySelectorAll("table.alarms span.ago[data-t]")) {
      span.textContent = ago(serverNow() - Number(span.dataset.t));
    }
  }

  render();
  poll("/dash/alarms.json", pollMs, (answer) => {
    data = answer;
    skew = data.now - Date.now() / 1000;
    render();
  }, status, first);
  setInterval(tick, 1000);
})();
