// meterline dashboard: calls the API's own endpoints with the tab's bearer token; what it shows
// is what the API answers that token (a team lead's queries are scoped by the API itself).
// No library: DOM built with textContent (never innerHTML), charts are plain SVG. Money is
// shown as the API's exact decimal text; floats only size bars and lines.
'use strict';

// ---------- errors: kept in the page (#errors, body[data-errors]) so a test can read them ----------
const pageErrors = [];
function pageError(msg) {
  pageErrors.push(String(msg));
  const ul = document.getElementById('errors');
  const li = document.createElement('li');
  li.textContent = String(msg);
  ul.append(li);
  ul.hidden = false;
  document.body.dataset.errors = String(pageErrors.length);
}
window.addEventListener('error', (e) => pageError('error: ' + e.message));
window.addEventListener('unhandledrejection', (e) => pageError('unhandled: ' + (e.reason && e.reason.stack || e.reason)));
const consoleError = console.error.bind(console);
console.error = (...a) => { pageError('console.error: ' + a.join(' ')); consoleError(...a); };

// ---------- DOM helpers ----------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) el.append(k instanceof Node ? k : String(k));
  return el;
}
const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  for (const k of kids.flat()) if (k !== null && k !== undefined) el.append(k instanceof Node ? k : String(k));
  return el;
}
function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    // numbers (SVG coordinates) to 0.01: short, and no float noise like 258.59999999999997
    else el.setAttribute(k, v === true ? '' : typeof v === 'number' ? String(Math.round(v * 100) / 100) : String(v));
  }
}
const fmtNum = (n) => Number(n).toLocaleString('en-US');
const axis = (n) => Number(n).toLocaleString('en-US', { maximumSignificantDigits: 3 });

// ---------- token and API ----------
const TOKEN_KEY = 'meterline.token';
let me = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function request(path, { method = 'GET', body, accept = 'application/json' } = {}) {
  const headers = { authorization: 'Bearer ' + sessionStorage.getItem(TOKEN_KEY), accept };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  if (!r.ok) {
    let msg = r.status + ' ' + r.statusText;
    const text = await r.text();
    try { msg = JSON.parse(text).error || msg; } catch (_) { if (text) msg = text; }
    throw new ApiError(r.status, msg);
  }
  return r;
}
const api = async (path, opts) => (await request(path, opts)).json();
// SQL over the API, as the caller: { rows, row_count, truncated, error? }
const sql = (q, accept) => request('/v1/sql', { method: 'POST', body: { sql: q }, accept });
const sqlRows = async (q) => {
  const a = await (await sql(q)).json();
  if (a.error) throw new ApiError(200, a.error);
  return a.rows;
};
const lit = (v) => "'" + String(v).replace(/'/g, "''") + "'";

function apiErrorBox(e) {
  if (!(e instanceof ApiError)) throw e;
  return h('div', { class: 'api-error', 'data-status': e.status }, e.status ? e.status + ': ' + e.message : e.message);
}

// A download of `path` as the API answers it: the bytes are fetched with the token, kept as a
// Blob, and saved by a plain <a download> on that Blob (data-bytes / data-sha256 name them).
function downloadLink(label, filename, fetchIt) {
  const a = h('a', { class: 'button plain', href: '#', download: filename, 'data-download': filename }, label);
  let ready = null;
  a.prepare = async () => {
    if (!ready) ready = (async () => {
      const blob = await (await fetchIt()).blob();
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
      a.href = URL.createObjectURL(blob);
      a.dataset.bytes = String(blob.size);
      a.dataset.sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
    })();
    return ready;
  };
  a.addEventListener('click', async (e) => {
    if (a.dataset.sha256) return; // prepared: the browser saves the Blob
    e.preventDefault();
    try { await a.prepare(); a.click(); } catch (err) { a.after(apiErrorBox(err)); ready = null; }
  });
  return a;
}

// ---------- routing: #/page?params ----------
const PAGES = [
  ['overview', 'Overview', ['admin', 'finance', 'viewer', 'team_lead'], overviewPage],
  ['budgets', 'Budgets', ['admin', 'finance', 'viewer', 'team_lead'], budgetsPage],
  ['anomalies', 'Anomalies', ['admin', 'finance', 'viewer', 'team_lead'], anomaliesPage],
  ['chargeback', 'Chargeback', ['admin', 'finance', 'viewer'], chargebackPage],
  ['sql', 'SQL', ['admin', 'finance', 'viewer', 'team_lead'], sqlPage],
  ['prices', 'Prices', ['admin'], pricesPage],
  ['tenants', 'Tenants', ['admin'], tenantsPage],
];

function route() {
  const m = location.hash.match(/^#\/([a-z]+)(?:\?(.*))?$/);
  return { page: m ? m[1] : 'overview', params: new URLSearchParams(m && m[2] || '') };
}
function go(page, params) {
  const q = new URLSearchParams(params).toString();
  location.hash = '#/' + page + (q ? '?' + q : '');
}

// A token handed over in the fragment (#token=…&page=…&other=params) moves to sessionStorage
// and leaves the URL (and the history) at once.
function takeTokenFromFragment() {
  if (!location.hash.startsWith('#token=')) return;
  const p = new URLSearchParams(location.hash.slice(1));
  sessionStorage.setItem(TOKEN_KEY, p.get('token'));
  const page = p.get('page') || 'overview';
  p.delete('token'); p.delete('page');
  const q = p.toString();
  history.replaceState(null, '', location.pathname + '#/' + page + (q ? '?' + q : ''));
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  render();
}

async function render() {
  const main = document.getElementById('main');
  delete document.body.dataset.ready;
  if (!sessionStorage.getItem(TOKEN_KEY)) return showSignIn(main);
  if (!me) {
    try { me = await api('/v1/me'); } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(main, e);
    }
  }
  const { page, params } = route();
  const allowed = PAGES.filter((p) => p.at(2).includes(me.role));
  const nav = document.getElementById('nav');
  nav.replaceChildren(...allowed.map(([id, label]) => h('a', { href: '#/' + id, class: id === page ? 'on' : null }, label)));
  const scope = me.teams.length ? 'teams ' + me.teams.join(', ') : 'all teams';
  document.getElementById('who').replaceChildren(
    h('span', { id: 'scope' }, me.principal + ' (' + me.role + ') · sees ' + scope),
    h('button', { class: 'plain', onclick: signOut }, 'Sign out'));
  const entry = allowed.find((p) => p[0] === page);
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  if (!entry) {
    main.replaceChildren(h('div', { class: 'api-error' }, 'The page "' + page + '" is not available to the role ' + me.role + '.'));
  } else {
    const t0 = performance.now();
    const content = await entry[3](params);
    if (route().page !== page) return; // navigated away meanwhile
    main.replaceChildren(content);
    document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
  }
  markReady(page);
}

function markReady(page) {
  const paint = performance.getEntriesByType('paint').find((p) => p.name === 'first-contentful-paint');
  const nav = performance.getEntriesByType('navigation')[0];
  if (paint) document.body.dataset.firstPaintMs = String(Math.round(paint.startTime));
  if (nav) document.body.dataset.domContentLoadedMs = String(Math.round(nav.domContentLoadedEventEnd));
  document.body.dataset.ready = page;
}

function showSignIn(main, err) {
  document.getElementById('nav').replaceChildren();
  document.getElementById('who').replaceChildren();
  const input = h('input', { type: 'password', autocomplete: 'off', placeholder: 'bearer token', id: 'token' });
  const form = h('form', {
    onsubmit: (e) => {
      e.preventDefault();
      if (!input.value.trim()) return;
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      render();
    },
  }, h('h1', null, 'Sign in'),
  h('p', { class: 'muted' }, 'Paste a meterline API bearer token. It is kept for this tab only (sessionStorage) and sent only to this API.'),
  input, h('button', { type: 'submit' }, 'Sign in'),
  err ? apiErrorBox(err) : null);
  main.replaceChildren(h('section', { class: 'card signin' }, form));
  markReady('signin');
}

// ---------- dates ----------
const day = (d) => d.toISOString().slice(0, 10);
const addDays = (s, n) => { const d = new Date(s + 'T00:00:00Z'); d.setUTCDate(d.getUTCDate() + n); return day(d); };
const today = () => day(new Date());
const month = (d) => d.toISOString().slice(0, 7);
// API timestamps: RFC 3339, or without an offset (UTC)
const ts = (t) => new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(t) ? t : t + 'Z');
const isoDay = /^\d{4}-\d{2}-\d{2}$/;

// ---------- charts (SVG) ----------
// ---------- money ----------
// Amounts are the API's exact decimal text. Adding them is exact: BigInt units of 1e-18, the
// ledger's Decimal(38,18). A float exists only as a chart coordinate (`coordinate`): geometry,
// never summed, never shown.
const MONEY_SCALE = 18;
function moneyUnits(text) {
  const m = /^(-?)(\d*)(?:\.(\d*))?$/.exec(String(text ?? '0').trim());
  if (!m) throw new Error('not a decimal amount: ' + text);
  const frac = (m[3] || '').slice(0, MONEY_SCALE).padEnd(MONEY_SCALE, '0');
  const u = BigInt((m[2] || '0') + frac);
  return m[1] ? -u : u;
}
const coordinate = (u) => Number(u) / 10 ** MONEY_SCALE;
const byAmountDesc = (a, b) => (a > b ? -1 : a < b ? 1 : 0);
const maxUnits = (...units) => units.reduce((m, u) => (u > m ? u : m));

const COLORS = ['#2f6fdf', '#e07b39', '#2e9d5b', '#9b59b6', '#d23c3c', '#17a2b8', '#c9a400', '#7f8c8d', '#e84393', '#6c5ce7'];

// Stacked columns: buckets (x, in order) × series; each rect carries data-series/-bucket/-value.
function stackedBars(buckets, series, values, { height = 200, label } = {}) {
  const W = 520, H = height, L = 48, B = 22, T = 10;
  const totals = buckets.map((b) => series.reduce((a, sr) => a + (values.get(b + '\u0000' + sr)?.num || 0), 0));
  const max = Math.max(...totals, 0) || 1;
  const bw = (W - L - 4) / Math.max(buckets.length, 1);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label || '' });
  for (const f of [0, 0.5, 1]) {
    const y = T + (H - T - B) * (1 - f);
    svg.append(s('line', { class: 'axis', x1: L, x2: W, y1: y, y2: y }), s('text', { x: L - 4, y: y + 4, 'text-anchor': 'end' }, axis(max * f)));
  }
  buckets.forEach((b, i) => {
    let y = H - B;
    series.forEach((sr, j) => {
      const v = values.get(b + '\u0000' + sr);
      if (!v || !v.num) return;
      const hgt = (H - T - B) * v.num / max;
      y -= hgt;
      svg.append(s('rect', { class: 'pt', x: L + i * bw + 1, y, width: Math.max(bw - 2, 1), height: Math.max(hgt, 0.5),
        fill: COLORS[j % COLORS.length], 'data-series': sr, 'data-bucket': b, 'data-value': v.text },
      s('title', null, `${b} · ${sr}: ${v.text}`)));
    });
    const every = Math.ceil(buckets.length / 6);
    if (i % every === 0) svg.append(s('text', { x: L + i * bw + bw / 2, y: H - 6, 'text-anchor': 'middle' }, b.slice(5)));
  });
  const legend = h('div', { class: 'legend' }, series.map((sr, j) => h('span', null, h('i', { style: null, 'data-color': j }), sr)));
  legend.querySelectorAll('i').forEach((el, j) => { el.style.background = COLORS[j % COLORS.length]; });
  return h('div', null, svg, legend);
}

// Lines over x positions 0..n-1: [{ name, points: [{x, num, text}] }]
function lineChart(n, lines, { height = 170, xLabel = (i) => String(i), band } = {}) {
  const W = 520, H = height, L = 48, B = 22, T = 10;
  const nums = lines.flatMap((l) => l.points.map((p) => p.num)).concat(band ? [band.hi] : []);
  const max = Math.max(...nums, 0) * 1.1 || 1;
  const X = (i) => L + (W - L - 8) * (n > 1 ? i / (n - 1) : 0.5);
  const Y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}` });
  for (const f of [0, 0.5, 1]) svg.append(s('line', { class: 'axis', x1: L, x2: W, y1: Y(max * f), y2: Y(max * f) }),
    s('text', { x: L - 4, y: Y(max * f) + 4, 'text-anchor': 'end' }, axis(max * f)));
  if (band) {
    svg.append(s('rect', { x: L, width: W - L - 8, y: Y(band.hi), height: Math.max(Y(band.lo) - Y(band.hi), 1), fill: '#2e9d5b', opacity: 0.15, 'data-band': `${band.lo}..${band.hi}` }),
      s('line', { x1: L, x2: W - 8, y1: Y(band.mid), y2: Y(band.mid), stroke: '#2e9d5b', 'stroke-dasharray': '4 3' }));
  }
  lines.forEach((l, j) => {
    const c = l.color || COLORS[j % COLORS.length];
    if (l.points.length > 1) svg.append(s('polyline', { fill: 'none', stroke: c, 'stroke-width': 2, points: l.points.map((p) => `${X(p.x)},${Y(p.num)}`).join(' ') }));
    for (const p of l.points) svg.append(s('circle', { class: 'pt', cx: X(p.x), cy: Y(p.num), r: p.r || 3, fill: p.fill || c, 'data-series': l.name, 'data-value': p.text },
      s('title', null, `${l.name} ${xLabel(p.x)}: ${p.text}`)));
  });
  const every = Math.ceil(n / 6);
  for (let i = 0; i < n; i += every) svg.append(s('text', { x: X(i), y: H - 6, 'text-anchor': 'middle' }, xLabel(i)));
  return svg;
}

function table(rows, columns, { num = [] } = {}) {
  if (!rows.length) return h('p', { class: 'muted' }, 'No rows.');
  const cell = (v) => v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  return h('div', { class: 'scroll' }, h('table', null,
    h('thead', null, h('tr', null, columns.map((c) => h('th', { class: num.includes(c) ? 'num' : null }, c)))),
    h('tbody', null, rows.map((r) => h('tr', null, columns.map((c) => {
      const v = cell(r[c]);
      // a long value (a hashed key) is cut on screen, whole in the title and in the text
      const cls = num.includes(c) ? 'num' : v.length > 28 ? 'long' : null;
      return h('td', { class: cls, title: cls === 'long' ? v : null }, v);
    }))))));
}

const card = (title, ...kids) => h('section', { class: 'card' }, title ? h('h2', null, title) : null, ...kids);

// Runs each part; an API error shows in place of its part, with the API's own message.
async function part(f) {
  try { return await f(); } catch (e) { return apiErrorBox(e); }
}

// ---------- overview ----------
async function overviewPage(params) {
  const to = isoDay.test(params.get('to') || '') ? params.get('to') : addDays(today(), 1);
  const from = isoDay.test(params.get('from') || '') ? params.get('from') : addDays(to, -30);
  const fromIn = h('input', { type: 'date', value: from, name: 'from' });
  const toIn = h('input', { type: 'date', value: to, name: 'to' });
  const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); go('overview', { from: fromIn.value, to: toIn.value }); } },
    h('label', null, 'from', fromIn), h('label', null, 'to (exclusive)', toIn), h('button', { type: 'submit' }, 'Show'));
  const days = [];
  for (let d = from; d < to && days.length < 400; d = addDays(d, 1)) days.push(d);

  const spendBy = (dim) => part(async () => {
    const a = await api(`/v1/reports/showback?from=${from}&to=${to}&by=${dim}&granularity=day`);
    return spendChart(a.rows, dim, days);
  });
  const ref = addDays(to, -1), prev = addDays(ref, -7);
  const [byTeam, byModel, keys, versus] = await Promise.all([
    spendBy('team'), spendBy('model'),
    part(async () => table(await sqlRows(
      `SELECT api_key_id AS api_key, currency, count(*) AS events, sum(cost_total) AS cost FROM usage
       WHERE date >= ${lit(from)} AND date < ${lit(to)} GROUP BY api_key_id, currency ORDER BY sum(cost_total) DESC, api_key_id LIMIT 10`),
    ['api_key', 'events', 'cost', 'currency'], { num: ['events', 'cost'] })),
    part(() => dayVersusDay(ref, prev)),
  ]);
  return h('div', null, h('h1', null, 'Overview'), form,
    h('div', { class: 'grid' },
      card('Spend by team, per day', byTeam), card('Spend by model, per day', byModel),
      card(`${ref} vs ${prev} (same weekday last week)`, versus), card('Top API keys', keys)));
}

// Showback rows → stacked columns of the main currency (others named, not mixed in).
function spendChart(rows, dim, days) {
  if (!rows.length) return h('p', { class: 'muted' }, 'No spend in this range.');
  const byCur = new Map();
  for (const r of rows) byCur.set(r.currency, (byCur.get(r.currency) || 0) + 1);
  const cur = [...byCur.keys()].sort((a, b) => byCur.get(b) - byCur.get(a))[0];
  // exact sums rank the series; every amount shown is the API's own decimal text
  const totals = new Map();
  for (const r of rows) if (r.currency === cur) totals.set(r[dim] ?? '(none)', (totals.get(r[dim] ?? '(none)') || 0n) + moneyUnits(r.cost));
  const ranked = [...totals.keys()].sort((a, b) => byAmountDesc(totals.get(a), totals.get(b)));
  const top = ranked.slice(0, 8);
  const series = ranked.length > 8 ? top.concat(['other']) : top;
  const values = new Map();
  for (const r of rows) {
    if (r.currency !== cur) continue;
    const name = r[dim] ?? '(none)';
    const sr = top.includes(name) ? name : 'other';
    const k = day(ts(r.bucket)) + '\u0000' + sr;
    const v = values.get(k);
    // one API value per cell except folded "other" cells, which show their parts
    const units = (v ? v.units : 0n) + moneyUnits(r.cost);
    values.set(k, { units, num: coordinate(units), text: v ? v.text + ' + ' + r.cost : r.cost });
  }
  const others = [...byCur.keys()].filter((c) => c !== cur);
  return h('div', null, stackedBars(days, series, values, { label: 'spend by ' + dim + ' in ' + cur }),
    h('p', { class: 'muted' }, `Cost in ${cur} per UTC day.` + (others.length ? ` Not shown: spend in ${others.join(', ')}.` : '')));
}

async function dayVersusDay(ref, prev) {
  const rows = await sqlRows(
    `SELECT date, date_trunc('hour', occurred_at) AS hour, currency, sum(cost_total) AS cost FROM usage
     WHERE date IN (${lit(ref)}, ${lit(prev)}) GROUP BY date, date_trunc('hour', occurred_at), currency ORDER BY hour`);
  const totals = await sqlRows(
    `SELECT date, currency, sum(cost_total) AS cost, count(*) AS events FROM usage
     WHERE date IN (${lit(ref)}, ${lit(prev)}) GROUP BY date, currency ORDER BY currency, date`);
  const currencies = [...new Set(totals.map((r) => r.currency))];
  const kpis = h('div', { class: 'kpi' }, currencies.length ? currencies.flatMap((c) => [ref, prev].map((d) => {
    const r = totals.find((t) => t.currency === c && String(t.date) === d);
    return h('div', { 'data-day': d }, h('span', { class: 'muted' }, d), h('b', null, r ? `${r.cost} ${c}` : `0 ${c}`),
      h('span', { class: 'muted' }, r ? fmtNum(r.events) + ' events' : 'no events'));
  })) : h('p', { class: 'muted' }, 'No spend on either day.'));
  const cur = currencies[0];
  const line = (d, color) => ({
    name: d, color,
    points: rows.filter((r) => String(r.date) === d && r.currency === cur)
      .map((r) => ({ x: ts(r.hour).getUTCHours(), num: coordinate(moneyUnits(r.cost)), text: `${r.cost} ${cur}` })),
  });
  const chart = cur ? lineChart(24, [line(ref, COLORS[0]), line(prev, '#9aa3b2')], { xLabel: (i) => String(i).padStart(2, '0') + 'h' }) : null;
  return h('div', null, kpis, chart, cur ? h('div', { class: 'legend' }, h('span', null, ref + ' (blue) vs ' + prev + ' (grey), per UTC hour, ' + cur)) : null);
}

// ---------- budgets ----------
// Start and end (UTC ms) of the period containing `now` in `tz`, for day / week / month.
function zoned(tz, ms) {
  const f = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const p = Object.fromEntries(f.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return { y: +p.year, m: +p.month, d: +p.day, local: Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) };
}
function localMidnight(tz, y, m, d) { // UTC ms of 00:00 local on y-m-d (m 1-based, may overflow)
  const guess = Date.UTC(y, m - 1, d);
  let t = guess - (zoned(tz, guess).local - guess);
  t -= zoned(tz, t).local - guess; // second pass across an offset change
  return t;
}
function periodBounds(kind, tz, now) {
  try {
    const z = zoned(tz, now);
    if (kind === 'day') return [localMidnight(tz, z.y, z.m, z.d), localMidnight(tz, z.y, z.m, z.d + 1)];
    if (kind === 'month') return [localMidnight(tz, z.y, z.m, 1), localMidnight(tz, z.y, z.m + 1, 1)];
    if (kind === 'week') {
      const dow = (new Date(Date.UTC(z.y, z.m - 1, z.d)).getUTCDay() + 6) % 7; // Monday 0
      return [localMidnight(tz, z.y, z.m, z.d - dow), localMidnight(tz, z.y, z.m, z.d - dow + 7)];
    }
  } catch (_) { /* unknown time zone: no bounds */ }
  return null;
}
// The ledger filter of a budget's scope, or null where SQL over `usage` cannot say it (tags).
function scopeFilter(kind, value) {
  const col = { org: 'org', cost_center: 'cost_center', team: 'team', project: 'project', api_key: 'api_key_id', user: 'user_id' }[kind];
  if (col) return `${col} = ${lit(value)}`;
  if (kind === 'model') {
    const i = value.indexOf('/');
    return i > 0 ? `provider = ${lit(value.slice(0, i))} AND model = ${lit(value.slice(i + 1))}` : `model = ${lit(value)}`;
  }
  return null;
}

async function budgetsPage() {
  const r = await request('/v1/reports/budgets').catch((e) => e);
  if (r instanceof Error) return h('div', null, h('h1', null, 'Budgets'), apiErrorBox(r));
  const asOf = r.headers.get('x-meterline-budgets-as-of');
  const budgets = (await r.json()).rows;
  const now = Date.now();
  // this period's spend per budget, one scoped query: the ledger's rows of its scope and currency
  const parts = [];
  budgets.forEach((b, i) => {
    b.bounds = b.signal_period_start && b.period === 'custom'
      ? [ts(b.signal_period_start).getTime(), ts(b.signal_period_end).getTime()] : periodBounds(b.period, b.timezone, now);
    const f = scopeFilter(b.scope_kind, b.scope_value);
    if (!b.bounds || !f) return;
    const [a, z] = b.bounds.map((t) => new Date(t).toISOString());
    parts.push(`SELECT ${i} AS i, sum(cost_total) AS spend FROM usage WHERE date >= ${lit(a.slice(0, 10))} AND date <= ${lit(z.slice(0, 10))}
      AND occurred_at >= TIMESTAMP ${lit(a)} AND occurred_at < TIMESTAMP ${lit(z)} AND currency = ${lit(b.currency)} AND ${f}`);
  });
  let spendError = null;
  if (parts.length) {
    try {
      for (const row of await sqlRows(parts.join(' UNION ALL '))) budgets[row.i].spend = row.spend ?? '0';
    } catch (e) { spendError = apiErrorBox(e); }
  }
  const list = budgets.length ? budgets.map(budgetRow) : [h('p', { class: 'muted' }, 'No budgets in your scope.')];
  return h('div', null, h('h1', null, 'Budgets'),
    h('p', { class: 'muted' }, 'Budget topics read ', asOf === 'never' ? 'never (no broker)' : h('time', null, asOf),
      '. Spend this period: the ledger\'s rows of the scope and currency (a tag scope shows its last signal only).'),
    spendError, card(null, list));
}

function budgetRow(b) {
  const limitUnits = moneyUnits(b.limit_amount);
  const spendText = b.spend ?? b.signal_spend;
  const spendUnits = moneyUnits(spendText || '0');
  const elapsed = b.bounds ? Math.min(Math.max((Date.now() - b.bounds[0]) / (b.bounds[1] - b.bounds[0]), 0), 1) : null;
  // the scale's end in exact units (120 % of the limit, or the spend past it), then only
  // coordinates: the amounts shown are the API's decimals
  const scaleUnits = maxUnits(limitUnits * 12n / 10n, spendUnits, 1n);
  const W = 600, H = 38;
  const X = (v) => W * v / coordinate(scaleUnits);
  const limit = coordinate(limitUnits), spend = coordinate(spendUnits);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, 'data-budget': b.budget_id });
  svg.append(s('rect', { x: 0, y: 14, width: X(limit), height: 16, fill: '#eef1f5' }));
  svg.append(s('rect', { class: 'pt', x: 0, y: 14, width: Math.max(X(spend), spendUnits > 0n ? 1 : 0), height: 16,
    fill: b.state === 'exceeded' ? '#d23c3c' : b.state === 'warning' ? '#d99100' : '#2e9d5b', 'data-value': spendText ?? '' },
  s('title', null, `spend ${spendText ?? 'unknown'} of ${b.limit_amount} ${b.currency}`)));
  let thresholds = [];
  try { thresholds = JSON.parse(b.thresholds); } catch (_) { /* shown as text below */ }
  const marks = (Array.isArray(thresholds) ? thresholds : [])
    .map((t) => ({ x: X(limit * t.percent / 100), label: `${t.percent} % ${t.action}` }))
    .sort((a, b) => b.x - a.x);
  // Every mark is drawn with its label as a tooltip; the label is also written, right-aligned
  // at the mark, from the highest down, only where it fits (spend far past the limit squeezes
  // the marks together and their labels would print over each other).
  let free = W;
  for (const m of marks) {
    svg.append(s('line', { x1: m.x, x2: m.x, y1: 12, y2: 34, stroke: '#1d2430', 'stroke-width': 1, 'data-threshold': m.label }, s('title', null, m.label)));
    const width = 6.5 * m.label.length;
    if (m.x <= free && m.x - 2 - width >= 0) {
      svg.append(s('text', { x: m.x - 2, y: 10, 'text-anchor': 'end' }, m.label));
      free = m.x - 2 - width - 6;
    }
  }
  if (elapsed !== null) svg.append(s('line', { x1: X(limit * elapsed), x2: X(limit * elapsed), y1: 10, y2: 36, stroke: '#2f6fdf', 'stroke-width': 2, 'stroke-dasharray': '3 2', 'data-elapsed': elapsed.toFixed(3) },
    s('title', null, `${(elapsed * 100).toFixed(1)} % of the period elapsed`)));
  const pctOf = limit > 0 ? (spend / limit * 100).toFixed(1) + ' % of limit' : '';
  const signal = b.signal_at ? `last signal ${b.signal_threshold_percent} % ${b.signal_action ?? ''} at ${b.signal_at} (spend ${b.signal_spend})` : 'no signal in force';
  return h('div', { class: 'budget', 'data-budget-id': b.budget_id },
    h('div', null, h('b', null, b.name), ' ', h('span', { class: 'badge ' + b.state }, b.state),
      h('div', { class: 'muted' }, `${b.scope_kind}=${b.scope_value} · ${b.period} (${b.timezone})`)),
    h('div', null, svg, h('div', { class: 'muted' }, elapsed === null ? '' : `blue: ${(elapsed * 100).toFixed(1)} % of the period elapsed`)),
    h('div', null, h('div', null, `${spendText ?? '—'} of ${b.limit_amount} ${b.currency}`), h('div', { class: 'muted' }, pctOf), h('div', { class: 'muted' }, signal)));
}

// ---------- anomalies ----------
async function anomaliesPage(params) {
  const to = isoDay.test(params.get('to') || '') ? params.get('to') : addDays(today(), 1);
  const from = isoDay.test(params.get('from') || '') ? params.get('from') : addDays(to, -8);
  const fromIn = h('input', { type: 'date', value: from }), toIn = h('input', { type: 'date', value: to });
  const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); go('anomalies', { from: fromIn.value, to: toIn.value }); } },
    h('label', null, 'windows from', fromIn), h('label', null, 'to (exclusive)', toIn), h('button', { type: 'submit' }, 'Show'));
  let rows;
  try { rows = (await api(`/v1/reports/anomalies?from=${from}&to=${to}`)).rows; } catch (e) {
    return h('div', null, h('h1', null, 'Anomalies'), form, apiErrorBox(e));
  }
  const shown = rows.slice(0, 25);
  const cards = await Promise.all(shown.map(anomalyCard));
  return h('div', null, h('h1', null, 'Anomalies'), form,
    h('p', { class: 'muted' }, `${rows.length} anomalies, highest score first` + (rows.length > shown.length ? ` (first ${shown.length} shown)` : '') + '.'),
    rows.length ? cards : card(null, h('p', { class: 'muted' }, 'No anomalies in this range.')));
}

async function anomalyCard(a) {
  const head = h('div', { class: 'row' },
    h('b', null, `${a.kind} · ${a.scope_kind}=${a.scope_value}` + (a.model ? ` · ${a.model}` : '')),
    h('span', { class: 'muted' }, `${a.window_start} – ${a.window_end}, observed ${a.observed}, expected ${a.expected}, score ${Number(a.score).toFixed(1)} (${a.method})`));
  const contributors = Array.isArray(a.top_contributors) && a.top_contributors.length
    ? h('div', { class: 'muted' }, 'top contributors: ' + a.top_contributors.map((c) => `${c.kind}=${c.value} (${c.spend})`).join(', ')) : null;
  const f = a.scope_kind === 'team' ? `team = ${lit(a.scope_value)}` + (a.model ? ` AND model = ${lit(a.model)}` : '')
    : a.scope_kind === 'org' ? `org = ${lit(a.scope_value)}` : scopeFilter(a.scope_kind, a.scope_value);
  if (a.kind !== 'spend_spike' || !f) {
    return h('section', { class: 'card', 'data-anomaly': a.anomaly_id }, head, contributors,
      h('p', { class: 'muted' }, f ? 'A usage-mix shift: observed and expected are ratios of the hour and its 168-hour baseline.' : 'The ledger has no series for this scope.'));
  }
  // the series: hourly spend of the anomaly's scope over the 47 hours before its window and the window
  const end = ts(a.window_end).getTime(), start = end - 48 * 3600e3;
  const [s0, s1] = [new Date(start).toISOString(), new Date(end).toISOString()];
  const chart = await part(async () => {
    const rows = await sqlRows(`SELECT date_trunc('hour', occurred_at) AS hour, sum(cost_total) AS cost FROM usage
      WHERE date >= ${lit(s0.slice(0, 10))} AND date <= ${lit(s1.slice(0, 10))} AND occurred_at >= TIMESTAMP ${lit(s0)}
      AND occurred_at < TIMESTAMP ${lit(s1)} AND ${f} GROUP BY date_trunc('hour', occurred_at) ORDER BY hour`);
    const byHour = new Map(rows.map((r) => [Math.round((ts(r.hour).getTime() - start) / 3600e3), r.cost]));
    const points = [];
    for (let i = 0; i < 48; i++) {
      const c = byHour.get(i);
      points.push({ x: i, num: coordinate(moneyUnits(c ?? '0')), text: c ?? '0', fill: i === 47 ? '#d23c3c' : undefined, r: i === 47 ? 5 : 2.5 });
    }
    // expected (dashed) and the lowest level the detector can flag: ≥ 2× the median and
    // z ≥ 6 with a scale of at least 10 % of the median or $0.05 — in exact units
    const expUnits = moneyUnits(a.expected);
    const flagUnits = maxUnits(2n * expUnits, expUnits + 6n * maxUnits(expUnits / 10n, moneyUnits('0.05')));
    const band = { lo: 0, mid: coordinate(expUnits), hi: coordinate(flagUnits) };
    const hourLabel = (i) => new Date(start + i * 3600e3).toISOString().slice(5, 13).replace('T', ' ') + 'h';
    return h('div', null, lineChart(48, [{ name: 'spend', points }], { band, xLabel: hourLabel }),
      h('div', { class: 'legend' }, h('span', null, 'hourly spend (UTC), window in red · dashed: expected ' + a.expected + ' · green band: below the lowest level the detector flags')));
  });
  return h('section', { class: 'card', 'data-anomaly': a.anomaly_id }, head, contributors, chart);
}

// ---------- chargeback ----------
async function chargebackPage(params) {
  const period = /^\d{4}-\d{2}$/.test(params.get('period') || '') ? params.get('period') : month(new Date());
  const by = ['cost_center', 'team', 'project'].includes(params.get('by')) ? params.get('by') : 'cost_center';
  const pIn = h('input', { type: 'month', value: period, name: 'period' });
  const bySel = h('select', { name: 'by' }, ['cost_center', 'team', 'project'].map((b) => h('option', { value: b, selected: b === by }, b)));
  const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); go('chargeback', { period: pIn.value, by: bySel.value }); } },
    h('label', null, 'month', pIn), h('label', null, 'group by', bySel), h('button', { type: 'submit' }, 'Show'));
  const url = (format) => `/v1/reports/chargeback?period=${period}&by=${by}&format=${format}`;
  const csv = downloadLink('Download CSV', `chargeback-${period}-${by}.csv`, () => request(url('csv')));
  const focus = downloadLink('Download FOCUS 1.2', `focus-${period}-${by}.csv`, () => request(url('focus')));
  const [report, closes] = await Promise.all([api(url('json')).catch((e) => e), api('/v1/periods').catch((e) => e)]);
  const out = h('div', null, h('h1', null, 'Chargeback'), form);
  if (report instanceof Error) { out.append(apiErrorBox(report)); return out; }
  const status = h('p', null, h('span', { class: 'badge ' + report.status, id: 'period-status' }, report.status), ' ',
    report.status === 'closed' ? `closed ${report.closed_at} by ${report.closed_by}: these bytes never change` : 'open: computed now, may still change',
    ' ', csv, ' ', focus);
  const totals = table(report.totals, ['currency', 'list_cost', 'billed_cost', 'adjustments_billed_cost', 'lines'],
    { num: ['list_cost', 'billed_cost', 'adjustments_billed_cost', 'lines'] });
  // billed per group (bars sized by float; labels are the API's exact sums per line)
  const groups = new Map();
  for (const l of report.lines) {
    const k = (l.group ?? '(none)') + ' · ' + l.currency;
    const g = groups.get(k) || { units: 0n, lines: [] };
    // an exact sum; the lines (shown) keep the API's decimal text
    g.units += moneyUnits(l.billed_cost); g.lines.push(l.billed_cost);
    g.num = coordinate(g.units);
    groups.set(k, g);
  }
  const max = Math.max(...[...groups.values()].map((g) => g.num), 0) || 1;
  const bars = s('svg', { class: 'chart', viewBox: `0 0 760 ${groups.size * 24 + 4}` });
  [...groups.entries()].sort((a, b) => byAmountDesc(a[1].units, b[1].units)).forEach(([k, g], i) => {
    bars.append(s('text', { x: 0, y: i * 24 + 16 }, k),
      s('rect', { class: 'pt', x: 220, y: i * 24 + 4, width: Math.max(520 * g.num / max, 1), height: 16, fill: COLORS[i % COLORS.length], 'data-series': k, 'data-value': g.lines.join(' + ') },
        s('title', null, `${k}: lines ${g.lines.join(' + ')}`)));
  });
  const closeBox = ['admin', 'finance'].includes(me.role) && report.status === 'open' ? closeControl(period, closes) : null;
  out.append(status, card('Totals (from the API)', totals),
    card(`Billed by ${by}`, groups.size ? bars : h('p', { class: 'muted' }, 'No lines.')),
    card('Lines', table(report.lines, ['category', 'charge_period', 'org', 'group', 'provider', 'model', 'currency', 'events', 'input_tokens', 'output_tokens', 'list_cost', 'billed_cost'],
      { num: ['events', 'input_tokens', 'output_tokens', 'list_cost', 'billed_cost'] })),
    closeBox || '');
  if (params.get('prepare') === 'csv') await csv.prepare();
  if (params.get('prepare') === 'focus') await focus.prepare();
  return out;
}

// Closing a month is permanent: a dialog that states it and wants the month typed back.
function closeControl(period, closes) {
  const last = Array.isArray(closes) && closes.length ? closes[closes.length - 1].period : null;
  const typed = h('input', { placeholder: period, autocomplete: 'off' });
  const confirmBtn = h('button', { class: 'danger', disabled: true }, 'Close ' + period);
  const result = h('div');
  const dlg = h('dialog', null, h('h2', null, 'Close ' + period + '?'),
    h('p', null, 'Closing writes the month\'s chargeback as an immutable snapshot. It cannot be reopened; usage of it that arrives later is billed as adjustments in the next open month.'),
    h('label', null, 'Type ' + period + ' to confirm', typed),
    h('div', { class: 'row' }, h('button', { class: 'plain', onclick: () => dlg.close() }, 'Cancel'), confirmBtn));
  typed.addEventListener('input', () => { confirmBtn.disabled = typed.value !== period; });
  confirmBtn.addEventListener('click', async () => {
    confirmBtn.disabled = true;
    try {
      const rec = await api(`/v1/periods/${period}/close`, { method: 'POST' });
      dlg.close();
      result.replaceChildren(h('p', null, `Closed ${rec.period} at ${rec.closed_at} by ${rec.closed_by}.`));
      render();
    } catch (e) { dlg.close(); result.replaceChildren(apiErrorBox(e)); }
  });
  return card('Close the month', h('p', { class: 'muted' }, last ? `Last closed month: ${last}.` : 'No month closed yet.'),
    h('button', { class: 'danger', onclick: () => { typed.value = ''; confirmBtn.disabled = true; dlg.showModal(); } }, 'Close ' + period + '…'), dlg, result);
}

// ---------- SQL console ----------
async function sqlPage(params) {
  const scope = me.teams.length ? `Your queries see only rows of teams ${me.teams.join(', ')} (the API scopes every table to them).` : 'Your queries see every team.';
  const ed = h('textarea', { spellcheck: 'false', id: 'sql' });
  ed.value = params.get('q') || 'SELECT date, team, model, currency, sum(cost) AS cost\nFROM daily_spend\nGROUP BY date, team, model, currency\nORDER BY date DESC, cost DESC\nLIMIT 100';
  const out = h('div', { id: 'result' });
  const holder = h('span');
  const run = async () => {
    const q = ed.value;
    out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
    const t0 = performance.now();
    try {
      const a = await (await sql(q)).json();
      const cols = a.rows.length ? Object.keys(a.rows[0]) : [];
      const ms = Math.round(performance.now() - t0);
      out.replaceChildren(h('div', null,
        h('p', { class: 'muted' }, `${a.row_count} rows in `, h('time', null, `${ms} ms`), a.truncated ? ' (truncated at the row limit)' : ''),
        a.error ? apiErrorBox(new ApiError(200, 'the query failed after its answer started: ' + a.error)) : null,
        table(a.rows, cols)));
      holder.replaceChildren(downloadLink('Download CSV', 'query.csv', () => sql(q, 'text/csv')));
    } catch (e) { out.replaceChildren(apiErrorBox(e)); holder.replaceChildren(); }
  };
  ed.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
  const page = h('div', null, h('h1', null, 'SQL'), h('p', { class: 'muted', id: 'sql-scope' }, scope + ' Tables: usage, anomalies, budgets; views daily_spend, monthly_spend.'),
    card(null, ed, h('div', { class: 'row' }, h('button', { onclick: run }, 'Run (Ctrl+Enter)'), holder)), card(null, out));
  if (params.get('run') === '1') await run();
  if (params.get('prepare') === 'csv' && holder.firstChild) await holder.firstChild.prepare();
  return page;
}

// ---------- prices and tenants (read-only) ----------
const when = (micros) => (micros === null || micros === undefined ? '' : new Date(micros / 1000).toISOString().replace('.000Z', 'Z'));

// Every version of every entry, newest first within an id; `latest` marks what applies to new
// changes (the highest version), the effective window says when each one prices.
function withHistory(all, id) {
  const top = {};
  for (const v of all) top[v[id]] = Math.max(top[v[id]] || 0, v.version);
  return [...all].sort((a, b) => (a[id] < b[id] ? -1 : a[id] > b[id] ? 1 : b.version - a.version))
    .map((v) => ({ ...v, latest: v.version === top[v[id]] ? 'latest' : '' }));
}

async function pricesPage() {
  return h('div', null, h('h1', null, 'Prices'), await part(async () => {
    const prices = withHistory(await api('/v1/admin/prices?history=true'), 'price_id');
    const rows = prices.map((p) => ({
      price_id: p.price_id, version: p.version, latest: p.latest, provider: p.provider, model: p.model, currency: p.currency,
      rates: (p.rates || []).map((r) => Object.entries(r).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ')).join('; '),
      effective: when(p.effective_from) + ' → ' + (when(p.effective_to) || '…'), deleted: p.deleted ? 'deleted' : '',
      changed: `${when(p.changed_at)} by ${p.author}: ${p.reason}`,
    }));
    const ids = new Set(prices.map((p) => p.price_id)).size;
    return card(`${ids} prices, ${prices.length} versions (every version, newest first)`,
      table(rows, ['price_id', 'version', 'latest', 'provider', 'model', 'currency', 'rates', 'effective', 'deleted', 'changed']));
  }));
}

async function tenantsPage() {
  return h('div', null, h('h1', null, 'Tenants'), await part(async () => {
    const rules = withHistory(await api('/v1/admin/tenants?history=true'), 'rule_id');
    const pairs = (o) => Object.entries(o || {}).filter(([, v]) => v !== null && v !== '').map(([k, v]) => `${k}=${v}`).join(' ');
    const rows = rules.map((r) => ({
      rule_id: r.rule_id, version: r.version, latest: r.latest, priority: r.priority, matches: pairs(r.match), tenant: pairs(r.tenant),
      effective: when(r.effective_from) + ' → ' + (when(r.effective_to) || '…'), deleted: r.deleted ? 'deleted' : '',
      changed: `${when(r.changed_at)} by ${r.author}: ${r.reason}`,
    }));
    const ids = new Set(rules.map((r) => r.rule_id)).size;
    return card(`${ids} tenant rules, ${rules.length} versions (every version, newest first)`,
      table(rows, ['rule_id', 'version', 'latest', 'priority', 'matches', 'tenant', 'effective', 'deleted', 'changed']));
  }));
}

// ---------- start ----------
takeTokenFromFragment();
window.addEventListener('hashchange', () => { takeTokenFromFragment(); render(); });
render();
