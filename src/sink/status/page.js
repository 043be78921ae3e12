// The status page's script. Reads /api/status once a second while the page
// is visible, and updates the page in place. Every string from the gateway
// (device and metric names, values, errors) is written with textContent,
// never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  let timer = null;
  let inFlight = false;
  // A poll asked for while one is under way (a card just opened) follows it.
  let again = false;
  let lastOk = 0;

  const byId = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setBadge(node, text, kind) {
    setText(node, text);
    const className = "badge " + kind;
    if (node.className !== className) node.className = className;
  }

  // A <dl> of [label, text] pairs, or [label, text, badgeKind] for a badge.
  function facts(dl, pairs) {
    while (dl.children.length > pairs.length * 2) dl.lastChild.remove();
    pairs.forEach(([label, text, badge], i) => {
      let dt = dl.children[i * 2];
      let dd = dl.children[i * 2 + 1];
      if (!dt) {
        dt = dl.appendChild(el("dt"));
        dd = dl.appendChild(el("dd"));
      }
      setText(dt, label);
      if (badge) {
        let b = dd.firstChild;
        if (!b || b.nodeType !== 1) {
          dd.textContent = "";
          b = dd.appendChild(el("span"));
        }
        setBadge(b, text, badge);
      } else {
        setText(dd, text);
      }
    });
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return `${d} d ${h} h`;
    if (h > 0) return `${h} h ${m} min`;
    if (m > 0) return `${m} min ${s % 60} s`;
    return `${s} s`;
  }

  function ago(ms, nowMs) {
    if (ms === null || ms === undefined) return "—";
    return duration((nowMs - ms) / 1000) + " ago";
  }

  function value(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number" && !Number.isInteger(v)) {
      return String(Number(v.toPrecision(7)));
    }
    return String(v);
  }

  function number(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "—";
  }

  function renderNode(s) {
    setText(byId("node-name"), `${s.node.group_id} / ${s.node.node_id}`);
    setText(byId("version"), `fieldmq ${s.version}`);
    document.title = `${s.node.node_id} · fieldmq`;
    const online = s.devices.filter((d) => d.state === "online").length;
    facts(byId("node"), [
      ["Group", s.node.group_id],
      ["Node", s.node.node_id],
      ["Profile", s.node.profile],
      ["Uptime", duration(s.node.uptime_s)],
      ["Devices", `${online} of ${s.devices.length} online`],
      ["Polls", `${number(s.counters.polls)} (${number(s.counters.poll_failures)} failed)`],
      ["Writes", `${number(s.counters.writes)} (${number(s.counters.write_failures)} failed)`],
      ["Commands refused", number(s.counters.commands_rejected)],
    ]);
  }

  function renderUplink(s) {
    const u = s.uplink;
    if (!u) {
      facts(byId("uplink"), [["State", "no [upstream]: values go to the log", "idle"]]);
      return;
    }
    const pairs = [
      ["Server", u.server || "—"],
      ["Connected", u.connected ? "yes" : "no", u.connected ? "yes" : "no"],
      [s.node.profile === "sparkplug" ? "Born" : "Ready", u.born ? "yes" : "no", u.born ? "yes" : "no"],
    ];
    if (u.bd_seq !== null) pairs.push(["bdSeq", String(u.bd_seq)]);
    if (u.primary_host) {
      pairs.push([
        `Primary host ${u.primary_host.id}`,
        u.primary_host.online ? "online" : "offline",
        u.primary_host.online ? "online" : "offline",
      ]);
    }
    pairs.push(["Messages dropped", number(s.counters.messages_dropped)]);
    facts(byId("uplink"), pairs);
  }

  function renderQueue(s) {
    const q = s.queue;
    if (!q) {
      facts(byId("queue"), [["State", "no [upstream]", "idle"]]);
      return;
    }
    facts(byId("queue"), [
      ["Queue", q.usable ? "usable" : "unavailable", q.usable ? "ok" : "bad"],
      ["Backlog", `${number(q.backlog)} samples`],
      ["Dropped", `${number(q.dropped)} samples`],
      ["Draining", `${q.drain_rate.toFixed(1)} samples/s`],
    ]);
  }

  function renderBroker(s) {
    const b = s.broker;
    if (!b) {
      facts(byId("broker"), [["State", "not running", "idle"]]);
      return;
    }
    const pairs = [
      ["Listening", b.listen],
      ["Clients", number(b.clients)],
    ];
    for (const login of b.logins) {
      pairs.push([login.user === null ? "anonymous" : `user ${login.user}`, number(login.clients)]);
    }
    facts(byId("broker"), pairs);
  }

  function renderBuses(s) {
    const body = byId("buses").tBodies[0];
    while (body.rows.length > s.buses.length) body.deleteRow(-1);
    s.buses.forEach((bus, i) => {
      let row = body.rows[i];
      if (!row) {
        row = body.insertRow();
        row.className = "bus";
        row.appendChild(el("td", "name"));
        row.appendChild(el("td")).appendChild(el("span", "badge"));
        row.appendChild(el("td", "line"));
        row.appendChild(el("td", "num"));
        row.appendChild(el("td", "num"));
        row.appendChild(el("td", "num"));
      }
      row.dataset.bus = bus.name;
      setText(row.cells[0], bus.name);
      setBadge(row.cells[1].firstChild, bus.state, bus.state);
      setText(row.cells[2], bus.transport);
      setText(row.cells[3], number(bus.requests));
      setText(row.cells[4], number(bus.failed_requests));
      setText(row.cells[5], `${(bus.load * 100).toFixed(1)} %`);
    });
  }

  const cards = new Map();

  function card(d, openByDefault) {
    const root = el("details", "device");
    root.open = openByDefault;
    // Opening a card asks for its metrics at once, not at the next tick.
    root.addEventListener("toggle", () => {
      if (root.open) poll();
    });
    const summary = root.appendChild(el("summary"));
    const parts = {
      root,
      name: summary.appendChild(el("span", "name")),
      state: summary.appendChild(el("span", "state")).appendChild(el("span", "badge")),
      where: summary.appendChild(el("span", "muted where")),
      error: root.appendChild(el("p", "error")),
      facts: root.appendChild(el("dl", "facts")),
      rows: new Map(),
    };
    const scroll = root.appendChild(el("div", "scroll"));
    const table = scroll.appendChild(el("table", "metrics"));
    const head = table.createTHead().insertRow();
    for (const [label, cls] of [["Metric"], ["Value"], ["Unit"], ["Quality"], ["Changed", "changed"]]) {
      head.appendChild(el("th", cls, label));
    }
    parts.body = table.createTBody();
    return parts;
  }

  function renderDevice(parts, d, nowMs) {
    parts.root.dataset.device = d.name;
    parts.root.dataset.state = d.state;
    setText(parts.name, d.name);
    setBadge(parts.state, d.state, d.state);
    const where = d.kind === "gpio" ? "GPIO" : `${d.bus} · unit ${d.unit}`;
    setText(parts.where, d.model ? `${where} · ${d.model}` : where);
    const error = d.last_error
      ? `${d.state === "offline" ? "Offline" : "Last error"}: ${d.last_error.message} (${ago(d.last_error.at_ms, nowMs)})`
      : "";
    setText(parts.error, error);
    parts.error.hidden = !error;
    const pairs = [[d.state === "online" ? "Online since" : "State since", ago(d.since_ms, nowMs)]];
    if (d.cycle) {
      const share = d.cycle.period_ms > 0 ? (100 * d.cycle.last_ms) / d.cycle.period_ms : 0;
      pairs.push([
        "Cycle",
        `${d.cycle.last_ms.toFixed(1)} ms of ${value(d.cycle.period_ms)} ms (${share.toFixed(1)} %)`,
      ]);
    }
    if (d.kind === "modbus") {
      pairs.push(["Requests", `${number(d.requests)} (${number(d.failed_requests)} failed)`]);
    }
    if (d.identity) {
      pairs.push(["Identity", [d.identity.vendor, d.identity.product_code, d.identity.revision].filter(Boolean).join(" · ")]);
    }
    facts(parts.facts, pairs);
    // Metrics come only for the cards open on this page; a closed card keeps its rows.
    if (d.metrics === null) return;
    const seen = new Set();
    for (const m of d.metrics) {
      seen.add(m.name);
      let row = parts.rows.get(m.name);
      if (!row) {
        row = parts.body.insertRow();
        for (const cls of ["name", "value", "unit", "quality", "changed"]) row.appendChild(el("td", cls));
        row.cells[3].appendChild(el("span", "badge"));
        parts.rows.set(m.name, row);
      }
      row.className = `metric ${m.quality}`;
      row.dataset.metric = m.name;
      setText(row.cells[0], m.writable ? `${m.name} ✎` : m.name);
      setText(row.cells[1], value(m.value));
      setText(row.cells[2], m.unit || "");
      setBadge(row.cells[3].firstChild, m.fault ? `bad: ${m.fault}` : m.quality, m.quality);
      setText(row.cells[4], ago(m.changed_ms, nowMs));
    }
    for (const [name, row] of parts.rows) {
      if (!seen.has(name)) {
        row.remove();
        parts.rows.delete(name);
      }
    }
  }

  function renderDevices(s) {
    const container = byId("devices");
    const openByDefault = s.devices.length <= 8;
    const seen = new Set();
    s.devices.forEach((d, i) => {
      seen.add(d.name);
      let parts = cards.get(d.name);
      if (!parts) {
        parts = card(d, openByDefault);
        cards.set(d.name, parts);
      }
      if (container.children[i] !== parts.root) container.insertBefore(parts.root, container.children[i] || null);
      renderDevice(parts, d, s.node.now_ms);
    });
    for (const [name, parts] of cards) {
      if (!seen.has(name)) {
        parts.root.remove();
        cards.delete(name);
      }
    }
  }

  function render(s) {
    renderNode(s);
    renderUplink(s);
    renderQueue(s);
    renderBroker(s);
    renderBuses(s);
    renderDevices(s);
  }

  function setLive(ok, detail) {
    const live = byId("live");
    if (ok) {
      live.className = "live ok";
      setText(live, "live");
    } else {
      live.className = "live stale";
      const since = lastOk ? ` — last update ${duration((Date.now() - lastOk) / 1000)} ago` : "";
      setText(live, `no answer (${detail})${since}`);
    }
  }

  // Metrics only for the open cards: a big site's page asks for what it shows.
  function statusUrl() {
    const open = [...cards.entries()].filter(([, parts]) => parts.root.open).map(([name]) => name);
    if (open.length === 0) return "api/status?device=";
    return "api/status?" + open.map((name) => "device=" + encodeURIComponent(name)).join("&");
  }

  async function poll() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    try {
      const response = await fetch(statusUrl(), { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const status = await response.json();
      const firstLoad = cards.size === 0;
      render(status);
      lastOk = Date.now();
      setLive(true);
      // The first reading named no device: fetch the metrics of the cards just opened.
      if (firstLoad && [...cards.values()].some((c) => c.root.open)) again = true;
    } catch (e) {
      setLive(false, e.message);
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        poll();
      }
    }
  }

  function start() {
    if (timer !== null) return;
    poll();
    timer = setInterval(poll, POLL_MS);
  }

  function stop() {
    if (timer === null) return;
    clearInterval(timer);
    timer = null;
  }

  document.addEventListener("visibilitychange", () => (document.hidden ? stop() : start()));
  if (!document.hidden) start();
})();
