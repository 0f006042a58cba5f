// The Wharf dashboard: one page over the admin API. It holds no data of its
// own and asks only what the caller may see: every panel is an API call made
// with the caller's bearer token, and a panel the caller may not read (403)
// stays hidden. Everything shown is built with text nodes, never parsed HTML.
'use strict';

const TOKEN = 'wharf.token';
const REFRESH_MS = 5000;
// Running totals are computed from a month of events: the timer reloads the
// billing panel this often only (Refresh and its own buttons reload it at once).
const BILLING_REFRESH_MS = 60000;
const CONFIRM_MS = 5000;
const MAX_TENANTS = 20;

const state = {
  me: null,
  // uPlot charts shown now (destroyed when redrawn).
  plots: [],
  changes: [],
  chartInstance: null,
  busy: false,
  again: false,
  // Bumped when the caller changes (log in, log out): what an earlier caller's
  // call answers after that is thrown away, never shown to the next one.
  epoch: 0,
  // When the billing panel was last loaded, and whether the next refresh must.
  billingAt: 0,
  billingDue: true,
  // An action waiting for its second click: { key, until }.
  confirming: null,
  // Invoices whose lines are open: "tenant/period".
  open: new Set(),
  timer: null,
};

// ---- small helpers ---------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { class: h.num ? 'num' : '' }, h.label ?? h)))),
    el('tbody', {}, rows));
}

const num = (n) => el('td', { class: 'num' }, n === null || n === undefined ? '' : Number(n).toLocaleString('en'));
const badge = (text, kind) => el('span', { class: `badge ${kind || ''}` }, text);

function ago(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function utc(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace('.000Z', 'Z') : '';
}

function flash(message, error) {
  const box = document.getElementById('flash');
  box.textContent = message;
  box.className = error ? 'error' : '';
  box.hidden = !message;
}

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.status === 401 && path !== '/v1/login') {
    signedOut('Your session ended or the credential is no longer valid: log in again.');
    throw new ApiFailure(401, 'not logged in');
  }
  if (!response.ok) throw new ApiFailure(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

// ---- logging in and out ----------------------------------------------------

function signedOut(message) {
  sessionStorage.removeItem(TOKEN);
  state.epoch += 1;
  state.me = null;
  clearInterval(state.timer);
  state.timer = null;
  for (const panel of document.querySelectorAll('.panel')) {
    panel.hidden = true;
    panel.querySelector('.body').replaceChildren();
    panel.removeAttribute('data-state');
  }
  document.getElementById('login').hidden = false;
  document.getElementById('logout').hidden = true;
  document.getElementById('refresh').hidden = true;
  document.getElementById('who').textContent = '';
  document.body.removeAttribute('data-refreshed');
  flash(message || '', Boolean(message));
}

async function logIn(event) {
  event.preventDefault();
  const form = event.target;
  const email = form.email.value.trim();
  const key = form.key.value.trim();
  try {
    if (key) {
      sessionStorage.setItem(TOKEN, key);
    } else if (email && form.password.value) {
      const session = await api('POST', '/v1/login', { email, password: form.password.value });
      sessionStorage.setItem(TOKEN, session.token);
    } else {
      flash('Enter your email and password, or an API key.', true);
      return;
    }
    form.reset();
    await start();
  } catch (e) {
    sessionStorage.removeItem(TOKEN);
    if (e.status !== 401 || !key) flash(`Cannot log in: ${e.message}`, true);
    else flash('That API key is invalid, expired or revoked.', true);
  }
}

async function logOut() {
  try {
    await api('POST', '/v1/logout');
  } catch (_) {
    // An API key has no session to end; forgetting it here is what matters.
  }
  signedOut('Logged out.');
}

async function start() {
  state.epoch += 1;
  state.billingDue = true;
  state.me = await api('GET', '/v1/me');
  document.getElementById('login').hidden = true;
  document.getElementById('logout').hidden = false;
  document.getElementById('refresh').hidden = false;
  const roles = state.me.tenants.map((t) => `${t.tenant} (${t.role})`).join(', ');
  document.getElementById('who').textContent =
    `${state.me.email}${state.me.operator ? ' · operator' : ''}${roles ? ` · ${roles}` : ''}`;
  flash('');
  await refresh();
  schedule();
}

function schedule() {
  clearInterval(state.timer);
  state.timer = document.getElementById('auto').checked ? setInterval(refresh, REFRESH_MS) : null;
}

// ---- panels ----------------------------------------------------------------

// Fill one panel from `load`, which returns its content; a panel the caller may
// not read is hidden, and one that failed says why.
async function panel(id, load) {
  const section = document.getElementById(id);
  const body = section.querySelector('.body');
  const epoch = state.epoch;
  try {
    const content = await load();
    if (epoch !== state.epoch) return;
    if (content === null) {
      section.hidden = true;
      section.setAttribute('data-state', 'forbidden');
      return;
    }
    body.replaceChildren(content);
    section.hidden = false;
    section.setAttribute('data-state', 'ok');
  } catch (e) {
    if (e.status === 401 || epoch !== state.epoch) return;
    if (e.status === 403) {
      section.hidden = true;
      section.setAttribute('data-state', 'forbidden');
      return;
    }
    body.replaceChildren(el('p', { class: 'bad' }, `Could not load: ${e.message}`));
    section.hidden = false;
    section.setAttribute('data-state', 'error');
  }
}

// Reload the panels (billing once a minute, or when asked); a call made while
// one runs is run again after it, so what an action changed is always shown.
async function refresh() {
  if (!state.me) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  const epoch = state.epoch;
  const billing = state.billingDue || Date.now() - state.billingAt >= BILLING_REFRESH_MS;
  if (billing) {
    state.billingDue = false;
    state.billingAt = Date.now();
  }
  try {
    await Promise.all([
      panel('nodes', nodesPanel),
      panel('services', servicesPanel).then(() => panel('charts', chartsPanel)),
      panel('instances', instancesPanel),
      panel('jobs', jobsPanel),
      panel('usage', usagePanel),
      billing ? panel('billing', billingPanel) : null,
    ]);
    if (epoch === state.epoch) document.body.setAttribute('data-refreshed', String(Date.now()));
  } finally {
    state.busy = false;
  }
  if (state.again) {
    state.again = false;
    await refresh();
  }
}

async function nodesPanel() {
  if (!state.me.operator) return null;
  const data = await api('GET', '/v1/nodes');
  const rows = data.nodes.map((n) => el('tr', { 'data-node': n.id },
    el('td', {}, n.id, n.id === data.this_node ? badge('this node', 'muted') : ''),
    el('td', {}, n.ingress), el('td', {}, n.admin),
    el('td', {}, n.live ? badge('live', 'ok') : badge('gone', 'bad')),
    num(n.generation), el('td', {}, ago(n.seen_at))));
  return table(['node', 'ingress', 'admin', 'state', { label: 'generation', num: true }, 'last beat'], rows);
}

// A button that acts at once, or (with `confirm`) asks for a second click.
function action(label, key, run, confirm) {
  const waiting = () => state.confirming && state.confirming.key === key && state.confirming.until > Date.now();
  return el('button', {
    type: 'button',
    class: waiting() ? 'confirm' : '',
    'data-action': key,
    onclick: async (event) => {
      if (confirm && !waiting()) {
        state.confirming = { key, until: Date.now() + CONFIRM_MS };
        event.target.className = 'confirm';
        event.target.textContent = `Confirm: ${label}`;
        return;
      }
      state.confirming = null;
      flash(`${label}…`);
      try {
        flash(await run());
      } catch (e) {
        if (e.status !== 401) flash(`${label} failed: ${e.message}`, true);
      }
      await refresh();
    },
  }, waiting() ? `Confirm: ${label}` : label);
}

const path = (...parts) => parts.map(encodeURIComponent).join('/');

async function servicesPanel() {
  const { services } = await api('GET', '/v1/services');
  if (!services.length) return el('p', { class: 'muted' }, 'No service published yet (wharf publish).');
  if (!state.me.operator) {
    return table(['service', 'active version', 'versions'], services.map((s) => el('tr', {},
      el('td', {}, s.name), el('td', {}, s.active_version || ''), el('td', {}, s.versions.map((v) => v.version).join(', ')))));
  }
  const rollouts = await Promise.all(services.map((s) => api('GET', `/v1/services/${path(s.name)}/rollout`)));
  // Promotions and rollbacks, marked on the charts.
  state.changes = rollouts.flatMap((r, i) => (r.history || []).map((h) => ({ ...h, service: services[i].name })));
  return el('div', {}, rollouts.map(rolloutOf));
}

function rolloutOf(r) {
  const service = r.service;
  const nodes = r.nodes.map((n) => n.id);
  const lagging = r.nodes.filter((n) => !n.caught_up).map((n) => n.id);
  const rows = r.versions.map((v) => {
    const byNode = new Map(v.nodes.map((s) => [s.node, s]));
    const marks = [
      v.active ? badge('active', 'ok') : '',
      v.previous ? badge('previous', 'muted') : '',
      v.staged_at ? badge('staged', 'warn') : '',
      v.pinned.length ? badge(`${v.pinned.length} pinned`, 'warn') : '',
    ];
    const actions = v.active ? [] : [
      action(`Stage ${v.version}`, `stage:${service}:${v.version}`, async () => {
        const res = await api('POST', `/v1/services/${path(service)}/stage`, { version: v.version });
        return res.ready ? `${service} ${v.version} is ready on every live node.`
          : `${service} ${v.version} is not ready on ${res.not_ready.join(', ')}.`;
      }),
      action(`Promote ${v.version}`, `promote:${service}:${v.version}`, async () => {
        const res = await api('POST', `/v1/services/${path(service)}/promote`, { version: v.version });
        return promoted(service, res);
      }, true),
    ];
    return el('tr', { 'data-version': v.version },
      el('td', {}, v.version), el('td', {}, marks),
      nodes.map((id) => {
        const s = byNode.get(id);
        if (!s) return el('td', { class: 'muted' }, '—');
        const kind = s.state === 'ready' ? 'ok' : s.state === 'failed' ? 'bad' : 'muted';
        return el('td', { title: s.error || '' }, badge(s.state, kind), s.error ? el('div', { class: 'bad' }, s.error) : '');
      }),
      num(v.requests), num(v.errors), el('td', {}, actions));
  });
  const header = el('h3', {}, service, ' ',
    r.active_version ? badge(`active ${r.active_version}`, 'ok') : badge('no active version', 'warn'),
    lagging.length ? badge(`catching up: ${lagging.join(', ')}`, 'warn') : '',
    r.previous_version ? action(`Roll back to ${r.previous_version}`, `rollback:${service}`, async () => {
      const res = await api('POST', `/v1/services/${path(service)}/rollback`, {});
      return promoted(service, res);
    }, true) : '');
  const history = r.history.slice(0, 5).map((h) => el('li', {},
    `${utc(Math.floor((h.at_ms || 0) / 1000))} ${h.kind} ${h.previous || '—'} → ${h.version || '—'}`,
    h.actor ? ` by ${h.actor}` : '', h.detail ? ` (${h.detail})` : ''));
  return el('div', { 'data-service': service }, header,
    table(['version', '', ...nodes, { label: 'requests', num: true }, { label: 'errors', num: true }, ''], rows),
    history.length ? el('details', {}, el('summary', {}, 'recent promotions'), el('ul', {}, history)) : '');
}

function promoted(service, res) {
  const pending = res.pending && res.pending.length ? `; not yet acknowledged by ${res.pending.join(', ')}` : '';
  return `${service} now runs ${res.version} (was ${res.previous || 'none'}), acknowledged by ` +
    `${res.acknowledged.length} node(s) in ${res.took_ms} ms${pending}.`;
}

// Charts (uPlot, served by the node): this node's requests and errors per
// service version with promotions and rollbacks marked, latency percentiles,
// the platform's job queue, and an instance's hourly usage from the ledger.
const PALETTE = ['#1b6ac9', '#2a7d3a', '#b3261e', '#9a6700', '#7b3fb0', '#00838f', '#c2185b', '#5d4037'];

function chart(title, unit, times, series, marks) {
  const box = el('div', { class: 'chart', 'data-chart': title });
  const width = Math.max(320, Math.min(1300, (document.querySelector('main') || document.body).clientWidth - 40));
  const opts = {
    title, width, height: 200,
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 1.5, dash: s.dash, spanGaps: false,
      points: { show: times.length < 40 },
    }))],
    axes: [{}, { label: unit, size: 60 }],
    scales: { x: { time: true } },
    hooks: { draw: [(u) => {
      // Promotions and rollbacks: a vertical line with its version.
      const { ctx } = u;
      ctx.save();
      ctx.font = `${11 * devicePixelRatio}px system-ui`;
      for (const m of marks || []) {
        const x = u.valToPos(m.at, 'x', true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.strokeStyle = m.kind === 'rollback' ? '#b3261e' : '#9a6700';
        ctx.fillStyle = ctx.strokeStyle;
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillText(m.label, x + 3, u.bbox.top + 12 * devicePixelRatio);
      }
      ctx.restore();
    }] },
  };
  const data = [times, ...series.map((s) => s.values)];
  const plot = new uPlot(opts, data, box);
  const drawn = series.reduce((n, s) => n + s.values.filter((v) => v !== null && v !== undefined).length, 0);
  box.setAttribute('data-series', series.map((s) => s.label).join('|'));
  box.setAttribute('data-values', String(drawn));
  box.setAttribute('data-marks', String((marks || []).length));
  state.plots.push(plot);
  return box;
}

async function chartsPanel() {
  if (typeof uPlot === 'undefined') return el('p', { class: 'bad' }, 'the chart library did not load');
  const history = await api('GET', '/v1/node/history');
  for (const p of state.plots.splice(0)) p.destroy();
  const times = history.times;
  const perSecond = (n) => (n === null ? null : n / history.interval_seconds);
  const label = (v) => `${v.service} ${v.version}`;
  const first = times[0] || 0;
  const marks = (state.changes || [])
    .map((h) => ({ at: Math.floor((h.at_ms || 0) / 1000), kind: h.kind, label: `${h.kind} ${h.service} ${h.version || ''}` }))
    .filter((m) => m.at >= first);
  const parts = [el('p', { class: 'hint' },
    `One point every ${history.interval_seconds} s over the last hour, counted by this node (each node keeps its own; Prometheus has the fleet's).`)];
  if (!times.length) {
    parts.push(el('p', { class: 'muted' }, 'No points yet.'));
    return el('div', {}, parts);
  }
  // Each version its own color, two apart in the palette, so versions side by
  // side during a rollout never look alike.
  const color = (i) => PALETTE[(i * 2) % PALETTE.length];
  parts.push(chart('Requests and server errors per second', 'req/s', times, history.versions.flatMap((v, i) => [
    { label: label(v), values: v.requests.map(perSecond), color: color(i) },
    { label: `${label(v)} 5xx`, values: v.errors.map(perSecond), color: color(i), dash: [4, 4] },
  ]), marks));
  parts.push(chart('Latency (arrival to response head)', 'ms', times, history.versions.flatMap((v, i) => [
    { label: `${label(v)} p50`, values: v.p50_ms, color: color(i) },
    { label: `${label(v)} p95`, values: v.p95_ms, color: color(i), dash: [6, 3] },
    { label: `${label(v)} p99`, values: v.p99_ms, color: color(i), dash: [2, 3] },
  ]), marks));
  parts.push(chart('Job queue (the platform\'s)', 'jobs', times, [
    { label: 'queued', values: history.queued }, { label: 'running', values: history.running },
  ], []));
  // An instance's hours from the usage ledger (what billing counts).
  const { instances } = await api('GET', '/v1/instances?limit=200');
  if (instances.length) {
    if (!instances.some((i) => i.id === state.chartInstance)) state.chartInstance = instances[0].id;
    const pick = el('select', { 'aria-label': 'instance' }, instances.map((i) => {
      const option = el('option', { value: i.id }, `${i.tenant} / ${i.name}`);
      if (i.id === state.chartInstance) option.selected = true;
      return option;
    }));
    pick.addEventListener('change', () => { state.chartInstance = pick.value; refresh(); });
    const ledger = await api('GET', `/v1/instances/${path(state.chartInstance)}/usage/hourly`);
    const rows = ledger.rows || ledger.hours || [];
    parts.push(el('h3', {}, 'Usage per hour of ', pick));
    parts.push(chart('Requests and fuel per hour (usage ledger)', 'per hour', rows.map((r) => r.hour), [
      { label: 'requests', values: rows.map((r) => r.requests) },
      { label: 'fuel (millions)', values: rows.map((r) => (r.fuel === undefined ? null : r.fuel / 1e6)) },
    ], []));
  }
  return el('div', {}, parts);
}

async function instancesPanel() {
  const { instances, next } = await api('GET', '/v1/instances?limit=200');
  if (!instances.length) return el('p', { class: 'muted' }, 'No instance yet.');
  const rows = instances.map((i) => {
    const setup = i.setup || {};
    const setupKind = setup.state === 'ready' ? 'ok' : setup.state === 'failed' ? 'bad' : 'warn';
    return el('tr', { 'data-instance': i.id },
      el('td', {}, i.name || i.id, i.name ? el('div', { class: 'muted' }, i.id) : ''),
      el('td', {}, i.tenant), el('td', {}, i.service),
      el('td', {}, (i.hosts || []).join(', '), (i.pending_hosts || []).length
        ? el('div', { class: 'warn' }, `pending: ${i.pending_hosts.join(', ')}`) : ''),
      el('td', {}, i.running_version || '', i.pinned_version ? badge(`pinned${i.pinned_by ? ` (${i.pinned_by})` : ''}`, 'warn') : ''),
      el('td', {}, (i.modules || []).join(', ')),
      el('td', {}, badge(setup.state || 'ready', setupKind), setup.error ? el('div', { class: 'bad' }, setup.error) : ''),
      el('td', {}, i.enabled ? badge('enabled', 'ok') : badge('disabled', 'muted'),
        i.ends_at ? el('div', { class: 'muted' }, `ends ${utc(i.ends_at)}`) : ''));
  });
  return el('div', {}, table(['instance', 'tenant', 'service', 'hosts', 'version', 'modules', 'setup', 'state'], rows),
    next ? el('p', { class: 'muted' }, 'The first 200 instances (wharf instance list shows them all).') : '');
}

async function jobsPanel() {
  const [stats, dead] = await Promise.all([api('GET', '/v1/jobs/stats'), api('GET', '/v1/jobs?state=dead&limit=50')]);
  const queue = stats.services.length
    ? table(['service', { label: 'queued', num: true }, { label: 'running', num: true }, { label: 'dead', num: true }, 'oldest waiting'],
      stats.services.map((s) => el('tr', { 'data-queue': s.service }, el('td', {}, s.service),
        num(s.queued), num(s.running), num(s.dead),
        el('td', {}, s.oldest_ready_ms ? `${(s.oldest_ready_ms / 1000).toFixed(1)} s` : ''))))
    : el('p', { class: 'muted' }, 'The queue is empty.');
  const deadJobs = dead.jobs.length
    ? el('div', {}, el('h3', {}, 'Dead jobs'), table(['job', 'instance', 'kind', 'attempts', 'last error', ''],
      dead.jobs.map((j) => el('tr', { 'data-job': j.id },
        el('td', {}, j.id), el('td', {}, j.instance), el('td', {}, `${j.kind} v${j.job_version}`),
        num(j.attempts), el('td', { class: 'bad' }, j.last_error || ''),
        el('td', {},
          action('Retry', `retry:${j.id}`, async () => {
            await api('POST', `/v1/jobs/${path(j.id)}/retry`);
            return `Job ${j.id} queued again.`;
          }),
          action('Cancel', `cancel:${j.id}`, async () => {
            await api('POST', `/v1/jobs/${path(j.id)}/cancel`);
            return `Job ${j.id} cancelled.`;
          }, true))))))
    : '';
  return el('div', {}, el('p', { class: 'muted' }, `${stats.workers} worker(s) on this node.`), queue, deadJobs);
}

async function usagePanel() {
  const { usage } = await api('GET', '/v1/usage?limit=200');
  if (!usage.length) return el('p', { class: 'muted' }, 'No usage recorded yet.');
  return table(['instance', 'tenant', 'service', { label: 'requests', num: true }, { label: 'jobs', num: true },
    { label: 'fuel', num: true }, { label: 'errors', num: true }],
  usage.map((u) => el('tr', { 'data-usage': u.instance }, el('td', {}, u.instance), el('td', {}, u.tenant),
    el('td', {}, u.service), num(u.requests), num(u.jobs), num(u.fuel), num(u.errors))));
}

async function billingPanel() {
  let tenants;
  let more = false;
  if (state.me.operator) {
    const page = await api('GET', `/v1/tenants?limit=${MAX_TENANTS}`);
    tenants = page.tenants.map((t) => t.id);
    more = Boolean(page.next);
  } else {
    tenants = state.me.tenants.map((t) => t.tenant).slice(0, MAX_TENANTS);
  }
  if (!tenants.length) return el('p', { class: 'muted' }, 'No tenant yet.');
  const blocks = await Promise.all(tenants.map(tenantBilling));
  const shown = blocks.filter(Boolean);
  if (!shown.length) return null;
  return el('div', {}, shown,
    more ? el('p', { class: 'muted' }, `The first ${MAX_TENANTS} tenants (wharf invoice list --tenant T for the others).`) : '');
}

// One tenant's running total and invoices, or nothing if the caller may not see them.
async function tenantBilling(tenant) {
  let account;
  let invoices;
  try {
    [account, { invoices }] = await Promise.all([
      api('GET', `/v1/tenants/${path(tenant)}/billing`),
      api('GET', `/v1/tenants/${path(tenant)}/invoices`),
    ]);
  } catch (e) {
    if (e.status === 403 || e.status === 404) return null;
    throw e;
  }
  const totals = (list) => list.length ? list.map((t) => t.formatted).join(' + ') : 'nothing billed';
  const limit = account.spending_limit !== null && account.spending_limit !== undefined
    ? `limit ${account.spending_limit} ${account.limit_currency || ''} (minor units)` : 'no spending limit';
  const rows = [];
  for (const inv of invoices) {
    const key = `${tenant}/${inv.period}`;
    const isOpen = state.open.has(key);
    rows.push(el('tr', { 'data-invoice': key }, el('td', {}, inv.period),
      el('td', {}, badge(inv.state, inv.state === 'closed' ? 'ok' : 'muted')), num(inv.lines),
      el('td', {}, totals(inv.totals)),
      el('td', {}, el('button', {
        type: 'button',
        onclick: async () => {
          if (isOpen) state.open.delete(key); else state.open.add(key);
          state.billingDue = true;
          await refresh();
        },
      }, isOpen ? 'Hide lines' : 'Show lines'))));
    if (isOpen) rows.push(el('tr', {}, el('td', { colSpan: 5 }, await invoiceLines(tenant, inv.period))));
  }
  return el('div', { 'data-tenant': tenant },
    el('h3', {}, tenant, ' ', account.suspended ? badge(`suspended: ${account.suspended}`, 'bad') : ''),
    el('p', {}, `Running total for ${account.period} so far: `, el('strong', {}, totals(account.running_totals)),
      ` · projected to the month's end: ${totals(account.projected_totals || [])} · ${limit}`),
    invoices.length ? table(['period', 'state', { label: 'lines', num: true }, 'total', ''], rows)
      : el('p', { class: 'muted' }, 'No invoice yet.'));
}

async function invoiceLines(tenant, period) {
  const invoice = await api('GET', `/v1/tenants/${path(tenant)}/invoices/${path(period)}`);
  if (!invoice.lines.length) return el('p', { class: 'muted' }, 'No lines: nothing is priced for this tenant in this period.');
  return table(['line', 'explanation', { label: 'amount', num: true }],
    invoice.lines.map((l) => el('tr', {}, el('td', {}, l.description),
      el('td', {}, l.explanation, l.sources.length ? el('div', { class: 'muted' }, l.sources.join('; ')) : ''),
      el('td', { class: 'num' }, l.formatted))));
}

// ---- start ----------------------------------------------------------------

document.getElementById('login-form').addEventListener('submit', logIn);
document.getElementById('logout').addEventListener('click', logOut);
document.getElementById('refresh').addEventListener('click', () => {
  state.billingDue = true;
  refresh();
});
document.getElementById('auto').addEventListener('change', () => { if (state.me) schedule(); });
if (sessionStorage.getItem(TOKEN)) {
  start().catch((e) => { if (e.status !== 401) signedOut(`Cannot reach the admin API: ${e.message}`); });
} else {
  signedOut();
}
