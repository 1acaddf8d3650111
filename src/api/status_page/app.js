// dakkio-gateway status page. Reads GET /api/status and POST /api/data/query
// with the key in the X-API-Key header (never in a URL), keeps the key in
// sessionStorage only, and renders every value from the gateway as text
// (textContent, createElement): payloads and topics are attacker-controlled.
'use strict';

(function () {
  const KEY_NAME = 'dakkio-gateway.key';
  const REFRESH_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  // Range → [milliseconds, groupBy of POST /api/data/query, group length].
  const RANGES = {
    '1h': [3600e3, 'minute', 60e3],
    '6h': [6 * 3600e3, 'minute', 60e3],
    '12h': [12 * 3600e3, 'minute', 60e3],
    '24h': [24 * 3600e3, 'hour', 3600e3],
    '7d': [7 * 24 * 3600e3, 'hour', 3600e3],
  };
  const UPLINK = {
    delivering: ['delivering', 'ok'],
    backing_off: ['backing off', 'warn'],
    rate_limited: ['rate limited', 'warn'],
    paused: ['paused', 'bad'],
    no_key: ['no write key', 'warn'],
    starting: ['starting', 'unknown'],
  };

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let range = '1h';
  // "bucket/source" → Map(group start ms → values), for the chosen range.
  let series = new Map();
  let busy = false;
  let cspViolations = 0;

  document.addEventListener('securitypolicyviolation', () => {
    cspViolations += 1;
    document.documentElement.dataset.cspViolations = String(cspViolations);
  });

  class AuthError extends Error {}

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function key() {
    return sessionStorage.getItem(KEY_NAME);
  }

  async function call(method, path, body) {
    const headers = { Accept: 'application/json', 'X-API-Key': key() || '' };
    if (body) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, {
      method,
      headers,
      body: body ? JSON.stringify(body) : undefined,
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
    const j = await r.json().catch(() => null);
    if (r.status === 401) throw new AuthError((j && j.message) || 'the key was refused');
    if (!r.ok) throw new Error((j && j.message) || 'the gateway answered ' + r.status);
    return j;
  }

  // ---- formatting --------------------------------------------------------

  function ago(iso, now) {
    if (!iso) return 'never';
    const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }

  function num(v) {
    if (typeof v !== 'number') return String(v);
    if (Number.isInteger(v)) return v.toLocaleString('en');
    return String(Number(v.toPrecision(5)));
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function clock(ms) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes());
  }

  function facts(pairs) {
    const dl = el('dl', 'facts');
    for (const [k, v, cls] of pairs) {
      dl.append(el('dt', null, k));
      dl.append(el('dd', cls || null, v));
    }
    return dl;
  }

  function card(title, badgeText, badgeClass) {
    const c = el('div', 'card');
    const head = el('div', 'card-head');
    head.append(el('h3', null, title));
    if (badgeText) head.append(el('span', 'badge ' + badgeClass, badgeText));
    c.append(head);
    return c;
  }

  // ---- rendering ---------------------------------------------------------

  function renderParts(s, now) {
    const box = $('parts');
    const cards = [];
    for (const p of s.parts) {
      const title = p.kind === 'serial' ? 'serial · ' + p.label
        : p.kind === 'mqtt' ? 'MQTT broker' : p.name;
      const cls = p.state === 'ok' ? 'ok' : p.state === 'degraded' ? 'bad' : 'unknown';
      const c = card(title, p.state, cls);
      c.dataset.part = p.name;
      if (p.kind === 'mqtt' && p.label) c.append(el('p', 'muted mono', p.label));
      if (p.kind === 'api') c.append(el('p', 'muted', 'serving this page'));
      if (p.kind === 'store') {
        const pct = s.store.maxBytes ? (100 * s.store.usedBytes) / s.store.maxBytes : 0;
        c.append(facts([['in use', bytes(s.store.usedBytes) + ' of ' + bytes(s.store.maxBytes) + ' (' + num(Math.round(pct * 10) / 10) + ' %)']]));
      }
      if (p.kind === 'serial') c.append(el('p', 'muted mono', p.name.slice(7)));
      if (p.reason) c.append(el('p', 'reason', p.reason));
      if (p.kind === 'mqtt' || p.kind === 'serial') {
        c.append(facts([['last message', ago(p.lastInputAt, now)]]));
      }
      cards.push(c);
    }
    for (const b of s.buckets) {
      const u = b.uplink;
      const [text, cls] = UPLINK[u.state] || [u.state, 'unknown'];
      const c = card('uplink · ' + b.name, text, cls);
      c.dataset.uplink = b._id;
      c.classList.add('uplink');
      c.querySelector('.badge').classList.add('uplink-state');
      if (u.reason) c.append(el('p', 'reason', u.reason));
      const rows = [['last delivery', ago(u.lastDeliveryAt, now)]];
      rows.push(['last reading', ago(b.lastReadingAt, now)]);
      if (u.pacingSeconds) rows.push(['budget pacing', 'a request every ' + num(u.pacingSeconds) + ' s']);
      if (u.key === 'missing') rows.push(['write key', 'missing']);
      c.append(facts(rows));
      cards.push(c);
    }
    box.replaceChildren(...cards);
  }

  function renderBuckets(s, now) {
    const cards = s.buckets.map((b) => {
      const q = b.queue;
      const c = card(b.name, q.ledgerBalanced ? 'ledger balanced' : 'ledger off by ' + num(q.ledgerDifference),
        q.ledgerBalanced ? 'ok' : 'bad');
      c.dataset.bucket = b._id;
      c.append(el('p', 'muted mono', b._id));
      const dropped = Object.entries(q.droppedByReason || {})
        .map(([r, n]) => r + ' ' + num(n)).join(', ');
      c.append(facts([
        ['queued', num(q.queued)],
        ['oldest queued', q.oldestQueuedAt ? ago(q.oldestQueuedAt, now).replace(' ago', '') : '—'],
        ['delivered today (UTC)', num(q.deliveredToday)],
        ['dead letters', num(q.deadLettered)],
        ['dropped', num(q.dropped) + (dropped ? ' (' + dropped + ')' : '')],
        ['accepted in all', num(q.accepted)],
        ['delivered in all', num(q.delivered)],
      ]));
      return c;
    });
    if (!cards.length) cards.push(el('p', 'empty', 'No bucket is visible to this key.'));
    $('buckets').replaceChildren(...cards);
  }

  function renderRejects(s) {
    const section = $('rejects-section');
    if (!s.rejects) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    const totals = Object.entries(s.rejects.totalByReason || {})
      .map(([r, n]) => r + ' ' + num(n)).join(' · ');
    $('rejects-total').textContent = totals ? 'Since the store was created: ' + totals : 'None so far.';
    const latest = s.rejects.latest;
    if (!latest.length) {
      $('rejects').replaceChildren();
      return;
    }
    const now = Date.parse(s.gateway.now);
    const table = el('table', 'rejects');
    const head = el('tr');
    for (const h of ['when', 'reason', 'topic or port', 'payload', 'detail']) head.append(el('th', null, h));
    const thead = el('thead');
    thead.append(head);
    table.append(thead);
    const body = el('tbody');
    for (const r of latest) {
      const tr = el('tr', 'reject');
      const cell = (label, text, cls) => {
        const td = el('td', cls, text);
        td.dataset.label = label;
        tr.append(td);
        return td;
      };
      cell('when', ago(r.at, now), 'when');
      cell('reason', r.reason, 'reason');
      cell('topic or port', r.origin.replace(/^mqtt:/, ''), 'mono');
      const p = cell('payload', null, 'payload');
      p.append(el('code', null, r.payloadExcerpt));
      if (r.payloadBytes > r.payloadExcerpt.length) p.append(el('span', 'muted', ' (' + r.payloadBytes + ' bytes)'));
      cell('detail', r.detail, 'detail');
      body.append(tr);
    }
    table.append(body);
    $('rejects').replaceChildren(table);
  }

  function plot(points, field, from, to, step) {
    const wrap = el('div', 'plot');
    wrap.dataset.field = field;
    const vals = points.map((p) => p[1]);
    const lo = Math.min(...vals);
    const hi = Math.max(...vals);
    const head = el('div', 'plot-head');
    head.append(el('span', null, field));
    head.append(el('span', null, 'min ' + num(lo) + ' · max ' + num(hi)));
    wrap.append(head);
    const W = 300;
    const H = 64;
    const s = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img' });
    s.append(svg('line', { x1: 0, y1: H / 2, x2: W, y2: H / 2, class: 'grid', 'vector-effect': 'non-scaling-stroke' }));
    const x = (t) => ((t - from) / (to - from)) * W;
    const y = (v) => (hi === lo ? H / 2 : H - 4 - ((v - lo) / (hi - lo)) * (H - 8));
    // A gap longer than two groups breaks the line.
    let run = [];
    const flush = () => {
      if (!run.length) return;
      // A lone group: a short dash, so it shows.
      if (run.length === 1) run.unshift([run[0][0] - 3, run[0][1]]);
      s.append(svg('polyline', {
        points: run.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' '),
        'vector-effect': 'non-scaling-stroke',
      }));
      run = [];
    };
    let prev = null;
    for (const [t, v] of points) {
      if (prev !== null && t - prev > 2 * step) flush();
      run.push([x(t + step / 2), y(v)]);
      prev = t;
    }
    flush();
    wrap.append(s);
    const foot = el('div', 'plot-foot');
    foot.append(el('span', null, clock(from)));
    foot.append(el('span', null, clock(to)));
    wrap.append(foot);
    return wrap;
  }

  function renderSources(s) {
    const now = Date.parse(s.gateway.now);
    const [span, , step] = RANGES[range];
    const from = now - span;
    const blocks = [];
    for (const b of s.buckets) {
      const block = el('div', 'bucket-sources');
      block.append(el('h3', 'bucket-title', b.name));
      const grid = el('div', 'cards wide');
      for (const src of b.dataSources) {
        const c = card(src.name, ago(src.lastDataPoint, now), src.lastDataPoint ? 'unknown' : 'warn');
        c.classList.add('source');
        c.dataset.sourceId = src._id;
        if (src.name !== src._id) c.append(el('p', 'muted mono', src._id));
        const values = el('div', 'values');
        for (const [k, v] of Object.entries(src.values || {})) {
          const item = el('span', 'value');
          item.dataset.field = k;
          item.append(el('b', null, num(v)));
          item.append(el('span', null, k));
          values.append(item);
        }
        if (!src.values) values.append(el('span', 'empty', 'no reading yet'));
        c.append(values);
        const groups = series.get(b._id + '/' + src._id);
        const fields = new Map();
        if (groups) {
          for (const [t, vals] of [...groups.entries()].sort((a, z) => a[0] - z[0])) {
            if (t < from - step) continue;
            for (const [f, v] of Object.entries(vals)) {
              if (typeof v !== 'number') continue;
              if (!fields.has(f)) fields.set(f, []);
              fields.get(f).push([t, v]);
            }
          }
        }
        if (!fields.size) c.append(el('p', 'empty', 'nothing to plot in this range'));
        for (const [f, pts] of fields) c.append(plot(pts, f, from, now, step));
        grid.append(c);
      }
      if (!b.dataSources.length) grid.append(el('p', 'empty', 'No data source yet.'));
      block.append(grid);
      blocks.push(block);
    }
    $('sources').replaceChildren(...blocks);
  }

  // ---- data --------------------------------------------------------------

  // Groups of the chosen range: the whole range once, then only from the
  // last (still filling) group on, so a refresh reads a minute, not an hour.
  async function loadSeries(s) {
    const now = Date.parse(s.gateway.now);
    const [span, groupBy, step] = RANGES[range];
    for (const b of s.buckets) {
      if (!b.dataSources.some((d) => d.lastDataPoint)) continue;
      let start = now - span;
      for (const d of b.dataSources) {
        const g = series.get(b._id + '/' + d._id);
        if (!g || !g.size) {
          start = now - span;
          break;
        }
        start = Math.max(start, Math.max(...g.keys()));
      }
      start = Math.floor(start / step) * step;
      for (let offset = 0, pages = 0; pages < 20; pages += 1) {
        const r = await call('POST', '/api/data/query', {
          bucketId: b._id,
          filters: {
            startTime: new Date(start).toISOString(),
            endTime: new Date(now + step).toISOString(),
            limit: 1000,
            offset,
          },
          aggregation: 'avg',
          groupBy,
        });
        for (const item of r.data) {
          const k = b._id + '/' + item.dataSourceId;
          if (!series.has(k)) series.set(k, new Map());
          series.get(k).set(Date.parse(item.timestamp), item.values);
        }
        if (!r.metadata.hasMore || !r.data.length) break;
        offset += r.data.length;
      }
    }
    for (const g of series.values()) {
      for (const t of [...g.keys()]) if (t < now - span - step) g.delete(t);
    }
  }

  function showError(text) {
    const e = $('error');
    e.hidden = !text;
    e.textContent = text || '';
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    if (!key()) return showLogin();
    if (busy) return;
    busy = true;
    try {
      await update();
    } finally {
      busy = false;
    }
    if (!document.hidden && key()) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function update() {
    try {
      const s = await call('GET', '/api/status');
      const now = Date.parse(s.gateway.now);
      $('gateway-id').textContent = s.gateway.id;
      setBadge($('overall'), s.status);
      $('updated').textContent = 'updated ' + clock(now) + ' · ' + s.scope + ' key';
      renderParts(s, now);
      renderBuckets(s, now);
      renderRejects(s);
      let plotError = null;
      try {
        await loadSeries(s);
      } catch (e) {
        if (e instanceof AuthError) throw e;
        plotError = 'Plots: ' + e.message;
      }
      renderSources(s);
      showDash();
      showError(plotError);
      document.documentElement.dataset.refreshed = String(Number(document.documentElement.dataset.refreshed || 0) + 1);
    } catch (e) {
      if (e instanceof AuthError) {
        forget();
        $('login-error').textContent = 'The gateway refused the key: ' + e.message;
        $('login-error').hidden = false;
        return;
      }
      showError('Cannot reach the gateway: ' + e.message);
    }
  }

  function setBadge(node, state) {
    node.textContent = state;
    node.className = 'badge ' + (state === 'ok' ? 'ok' : state === 'degraded' ? 'bad' : 'unknown');
  }

  function showDash() {
    $('login').hidden = true;
    $('dash').hidden = false;
    $('forget').hidden = false;
  }

  async function showLogin() {
    $('dash').hidden = true;
    $('forget').hidden = true;
    $('login').hidden = false;
    $('gateway-id').textContent = '';
    $('updated').textContent = '';
    $('key').focus();
    try {
      const r = await fetch('/health', { cache: 'no-store', credentials: 'omit' });
      const j = await r.json();
      setBadge($('health'), j.status);
      setBadge($('overall'), j.status);
    } catch (e) {
      setBadge($('health'), 'unreachable');
    }
  }

  function forget() {
    sessionStorage.removeItem(KEY_NAME);
    clearTimeout(timer);
    timer = null;
    series = new Map();
    for (const id of ['parts', 'buckets', 'rejects', 'sources']) $(id).replaceChildren();
    showLogin();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const k = $('key').value.trim();
      $('key').value = '';
      if (!k) return;
      sessionStorage.setItem(KEY_NAME, k);
      $('login-error').hidden = true;
      refresh();
    });
    $('forget').addEventListener('click', forget);
    $('range').addEventListener('change', () => {
      range = $('range').value;
      series = new Map();
      refresh();
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && key() && timer === null) refresh();
    });
    if (key()) refresh(); else showLogin();
  });
})();
