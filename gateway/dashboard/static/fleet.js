// The fleet page: the table is drawn from /dash/nodes.json, fetched every few seconds, and the
// nodes that have a location are markers on a map (Leaflet; tiles from [dashboard] map_tiles).
(function () {
  "use strict";
  const {ago, number, shown, readJSON, el, poll} = window.meterlink;
  const table = document.getElementById("fleet");
  const body = table.querySelector("tbody");
  const filter = document.getElementById("filter");
  const status = document.getElementById("status");
  const pollMs = Number(table.dataset.poll || 3) * 1000;
  const units = readJSON("units");
  let data = readJSON("fleet-data");
  let skew = data.now - Date.now() / 1000;  // server clock - ours

  function serverNow() { return Date.now() / 1000 + skew; }

  function haystack(n) {
    return [n.node, n.state, n.fw, n.group, n.board, ...(n.alarms || [])]
      .filter(Boolean).join(" ").toLowerCase();
  }

  function row(n) {
    const values = Object.entries(n.last_values || {})
      .filter(([label]) => !label.startsWith("alarms"))
      .slice(0, 4)
      .map(([label, x]) => label + " " + shown(units, label, x.v)).join(", ");
    return el("tr", {"data-node": n.node},
      el("td", {}, el("a", {href: "/nodes/" + encodeURIComponent(n.node)}, n.node)),
      el("td", {}, el("span", {class: "state state-" + (n.state || "unknown")}, n.state || "unknown")),
      el("td", {class: "ago", "data-t": n.last_seen == null ? "" : n.last_seen,
                title: n.last_seen ? new Date(n.last_seen * 1000).toISOString() : ""},
         n.last_seen == null ? "never" : ago(serverNow() - n.last_seen)),
      el("td", {class: "num"}, n.battery_mv == null ? "–" : number(n.battery_mv / 1000) + " V"),
      el("td", {class: "num"}, n.rssi == null ? "–" : n.rssi + " dBm"),
      el("td", {class: "num" + (n.qd ? " warn" : "")},
         (n.q == null ? "–" : n.q) + " / " + (n.qd == null ? "–" : n.qd)),
      el("td", {}, n.fw || "–"),
      el("td", {class: (n.alarms || []).length ? "alarm" : ""}, (n.alarms || []).join(", ") || "–"),
      el("td", {class: "values"}, values || "–"));
  }

  function render() {
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shownNodes = data.nodes.filter(n => words.every(w => haystack(n).includes(w)));
    body.replaceChildren(...shownNodes.map(row));
    document.getElementById("count").textContent =
      words.length ? shownNodes.length + " of " + data.nodes.length : data.nodes.length;
    document.getElementById("empty").hidden = shownNodes.length > 0;
    renderMap(shownNodes);
  }

  // ---- the map: a marker per node with a location (the filter applies to it too)
  const mapBox = document.getElementById("map");
  let map = null;
  const markers = {};  // node id -> Leaflet marker
  const icons = {};  // state -> icon (its class colours the marker: dashboard.css)

  function located(n) {
    return n.location != null && isFinite(n.location.lat) && isFinite(n.location.lon);
  }

  function iconFor(state) {
    const key = state || "unknown";
    if (!icons[key]) icons[key] = new L.Icon.Default({className: "marker-" + key});
    return icons[key];
  }

  function popup(n) {
    return el("div", {class: "map-popup"},
      el("a", {href: "/nodes/" + encodeURIComponent(n.node)}, n.node), " ",
      el("span", {class: "state state-" + (n.state || "unknown")}, n.state || "unknown"),
      el("div", {}, n.last_seen == null ? "never heard of"
                                        : "last seen " + ago(serverNow() - n.last_seen)));
  }

  function renderMap(nodes) {
    const here = nodes.filter(located);
    const anywhere = data.nodes.some(located);
    if (typeof L === "undefined") {
      document.getElementById("map-off").hidden = !anywhere;
      return;
    }
    const appears = mapBox.hidden && anywhere;
    mapBox.hidden = !anywhere;
    if (!anywhere) return;
    if (map && appears) map.invalidateSize();  // it was drawn while hidden (no size)
    let fit = false;
    if (!map) {
      map = L.map(mapBox, {maxZoom: 19});
      const tiles = mapBox.dataset.tiles;
      if (tiles) {
        // the dashboard's origin as the Referer (not the page: Referrer-Policy same-origin
        // would send none, and OpenStreetMap's tile servers refuse requests without one)
        L.tileLayer(tiles, {maxZoom: 19, attribution: "", referrerPolicy: "strict-origin"})
          .addTo(map);
        map.attributionControl.addAttribution(  // plain text, never markup
          el("span", {}, mapBox.dataset.attribution).innerHTML);
      }
      fit = true;
    }
    const seen = new Set();
    for (const n of here) {
      seen.add(n.node);
      const at = [n.location.lat, n.location.lon];
      let m = markers[n.node];
      if (!m) {
        m = markers[n.node] = L.marker(at, {icon: iconFor(n.state), title: n.node, alt: n.node})
          .addTo(map);
        m.bindPopup("");
        m.bindTooltip("");
      }
      m.setLatLng(at);
      if (m.options.icon !== iconFor(n.state)) m.setIcon(iconFor(n.state));
      m.setPopupContent(popup(n));
      m.setTooltipContent(el("span", {}, n.node + " · " + (n.state || "unknown")));
    }
    for (const id of Object.keys(markers)) {
      if (!seen.has(id)) { markers[id].remove(); delete markers[id]; }
    }
    if (fit) {
      const all = data.nodes.filter(located).map(n => [n.location.lat, n.location.lon]);
      map.fitBounds(L.latLngBounds(all), {padding: [40, 40], maxZoom: 15});
    }
    mapBox.dataset.markers = String(Object.keys(markers).length);
  }

  function tick() {  // the "12 s ago" cells, between polls
    for (const cell of body.querySelectorAll("td.ago[data-t]")) {
      if (cell.dataset.t) cell.textContent = ago(serverNow() - Number(cell.dataset.t));
    }
  }

  filter.addEventListener("input", render);
  render();
  poll("/dash/nodes.json", pollMs, (answer) => {
    data = answer;
    skew = data.now - Date.now() / 1000;
    render();
  }, status, table);
  setInterval(tick, 1000);
})();
