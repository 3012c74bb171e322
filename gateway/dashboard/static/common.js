// Helpers shared by the dashboard's pages (gateway/dashboard/__init__.py serves them).
(function () {
  "use strict";

  // seconds -> "12 s ago", "5 min ago", "3 h ago", "2 d ago"
  function ago(seconds) {
    if (seconds == null || !isFinite(seconds)) return "never";
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return s + " s ago";
    if (s < 90 * 60) return Math.round(s / 60) + " min ago";
    if (s < 36 * 3600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function number(x) {
    if (x == null || !isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a >= 1000) return x.toFixed(0);
    if (a === 0) return "0";
    return String(Number(x.toPrecision(4)));
  }

  // [unit shown, factor] for a channel label such as "temperature" or "temperature:1"
  function unitOf(units, label) {
    return units[String(label).split(":")[0]] || ["", 1];
  }

  // a channel's value as shown: "21.5 °C"
  function shown(units, label, v) {
    if (typeof v !== "number") return String(v);
    const [unit, factor] = unitOf(units, label);
    return number(v * factor) + (unit ? " " + unit : "");
  }

  function readJSON(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  // GET a session-authenticated JSON route; to the login page when the session ended
  async function getJSON(url) {
    const reply = await fetch(url, {credentials: "same-origin",
                                    headers: {Accept: "application/json"}});
    if (reply.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("logged out");
    }
    if (!reply.ok) throw new Error(url + ": " + reply.status);
    return reply.json();
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c == null ? "" : c);
    return e;
  }

  // GETs `url` every `ms` and hands each answer to `onData`; `status` says when that last
  // worked (class "stale" when it failed) and `marker.dataset.updated` counts the answers
  function poll(url, ms, onData, status, marker) {
    async function once() {
      try {
        onData(await getJSON(url));
        status.textContent = "updated " + new Date().toLocaleTimeString();
        status.classList.remove("stale");
        marker.dataset.updated = String(Number(marker.dataset.updated || 0) + 1);
      } catch (e) {
        status.textContent = "not updated: " + e.message;
        status.classList.add("stale");
      }
    }
    setInterval(once, ms);
  }

  window.meterlink = {ago, number, unitOf, shown, readJSON, getJSON, el, poll};
})();
