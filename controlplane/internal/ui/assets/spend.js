// Spend (per-day charts, budgets, logs), the audit log and the proxies.
import uPlot from './vendor/uplot/uPlot.esm.js';
import { h, table, field, usd, when, budget } from './dom.js';
import { api, me } from './app.js';

const day = 86400e3;
function isoDay(d) { return new Date(d).toISOString().slice(0, 10); }

const palette = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777', '#64748b'];

// chart draws one per-day series per group (the 8 largest, the rest as
// "other") with uPlot, and a table with the same figures for screen readers.
function chart(title, report, width) {
  const days = (report.days || []).map(d => d.group_by_day);
  const totals = new Map();
  for (const d of report.days || []) for (const g of d.groups || []) totals.set(g.group, (totals.get(g.group) || 0) + g.total_spend);
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]);
  const top = ranked.slice(0, 8).map(([g]) => g);
  const hasOther = ranked.length > top.length;
  const names = hasOther ? [...top, 'other'] : top;
  const xs = days.map(d => Date.parse(d + 'T00:00:00Z') / 1000);
  const ys = names.map(() => days.map(() => 0));
  (report.days || []).forEach((d, i) => {
    for (const g of d.groups || []) {
      const idx = top.indexOf(g.group);
      ys[idx >= 0 ? idx : names.length - 1][i] += g.total_spend;
    }
  });
  const id = 'chart-' + title.replace(/\W+/g, '-').toLowerCase();
  const box = h('figure', { class: 'chart', 'aria-labelledby': id + '-cap' }, h('figcaption', { id: id + '-cap' }, title));
  const plotBox = h('div', { class: 'plot', role: 'img', 'aria-label': `${title}: per-day spend chart; the table below has the figures` });
  box.append(plotBox);
  if (names.length) {
    const opts = {
      width, height: 220,
      scales: { x: { time: true } },
      series: [{}, ...names.map((n, i) => ({ label: n || '(none)', stroke: palette[i % palette.length], width: 2, value: (u, v) => v == null ? '—' : usd(v) }))],
      axes: [{}, { values: (u, vals) => vals.map(v => v === 0 ? '$0' : '$' + (Math.abs(v) < 0.01 ? v.toPrecision(2) : v.toFixed(2))), size: 80 }],
    };
    // uPlot measures its container, so it is built once the figure is in the document.
    requestAnimationFrame(() => {
      if (!plotBox.isConnected) return;
      opts.width = Math.max(plotBox.clientWidth, 320);
      new uPlot(opts, [xs, ...ys], plotBox);
    });
  } else {
    plotBox.append(h('p', { class: 'empty' }, 'No spend in this period.'));
  }
  box.append(h('details', {}, h('summary', {}, `${title}: totals`),
    table([{ label: 'Group', get: r => r[0] || '(none)' }, { label: 'Spend', get: r => usd(r[1]) }], ranked, `${title} totals`)));
  return box;
}

const logFilters = { api_key: '', user_id: '', team_id: '', request_id: '', start_date: '', end_date: '', page: 1 };

export const spendPage = {
  async render({ rerender }) {
    const end = new Date(Date.now() + day);
    const start = new Date(end - 30 * day);
    const range = { start_date: isoDay(start), end_date: isoDay(end) };
    const groups = [['api_key', 'Spend per key'], ['team', 'Spend per team'], ['user', 'Spend per user'], ['model', 'Spend per model']];
    const reports = await Promise.all(groups.map(([g]) => api('/global/spend/report', { query: { ...range, group_by: g } }).catch(e => ({ error: e.message }))));
    const logs = await api('/spend/logs/paged', { query: { ...logFilters, page: logFilters.page, page_size: 50 } });
    const width = Math.min(Math.max(document.getElementById('main').clientWidth - 60, 320), 1100);
    const specs = [
      { name: 'api_key', label: 'Key (token id)', value: logFilters.api_key },
      { name: 'user_id', label: 'User', value: logFilters.user_id },
      { name: 'team_id', label: 'Team', value: logFilters.team_id },
      { name: 'request_id', label: 'Request ID', value: logFilters.request_id },
      { name: 'start_date', label: 'From', type: 'date', value: logFilters.start_date },
      { name: 'end_date', label: 'Until (exclusive)', type: 'date', value: logFilters.end_date },
    ];
    const filter = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter spend logs', onsubmit: ev => {
      ev.preventDefault();
      for (const s of specs) logFilters[s.name] = ev.target.elements.namedItem(s.name).value.trim();
      logFilters.page = 1;
      rerender();
    } }, specs.map(field), h('button', { type: 'submit' }, 'Apply filters'));
    const pages = Math.max(logs.total_pages || 1, 1);

    // Budgets: the caller's visible keys and teams with a budget.
    const budgets = [];
    try {
      const ks = await api('/key/list', { query: { size: 100, return_full_object: 'true' } });
      for (const k of ks.keys_full || []) if (k.max_budget != null || k.soft_budget != null) budgets.push({ what: `key ${k.key_alias || k.key_name}`, spend: k.spend, max: k.max_budget, soft: k.soft_budget });
      const ts = await api('/team/list');
      for (const t of ts || []) if (t.max_budget != null || t.soft_budget != null) budgets.push({ what: `team ${t.team_alias || t.team_id}`, spend: t.spend, max: t.max_budget, soft: t.soft_budget });
    } catch { /* budgets are a convenience */ }

    return h('section', { 'aria-labelledby': 'spend-title' },
      h('div', { class: 'page-head' }, h('h1', { id: 'spend-title' }, 'Spend')),
      h('p', { class: 'hint' }, `Per day, ${range.start_date} to ${isoDay(end - day)} (UTC)` + (me().reads_all ? '.' : ', your own spend only.')),
      h('div', { class: 'charts' }, groups.map(([, title], i) => reports[i].error ? h('p', { class: 'error' }, `${title}: ${reports[i].error}`) : chart(title, reports[i], width))),
      h('h2', {}, 'Budgets'),
      table([{ label: 'Object', get: b => b.what }, { label: 'Spend against soft and hard limits', get: b => budget(b.spend, b.max, b.soft) }], budgets, 'Budgets'),
      h('h2', { id: 'spend-logs' }, 'Spend logs'), filter,
      table([
        { label: 'Time', get: l => when(l.start_time) },
        { label: 'Request', get: l => h('code', {}, l.request_id) },
        { label: 'Key', get: l => h('code', {}, l.api_key) },
        { label: 'User', get: l => l.user || '—' },
        { label: 'Team', get: l => l.team_id || '—' },
        { label: 'Model', get: l => l.model },
        { label: 'Tokens', get: l => `${l.prompt_tokens} + ${l.completion_tokens}` },
        { label: 'Spend', get: l => usd(l.spend) },
        { label: 'Status', get: l => String(l.status) },
        { label: 'Proxy', get: l => l.proxy_id || '—' },
      ], logs.spend_logs || [], 'Spend logs'),
      h('nav', { class: 'pager', 'aria-label': 'Spend log pages' },
        h('button', { type: 'button', disabled: logFilters.page <= 1, onclick: () => { logFilters.page -= 1; rerender(); } }, 'Previous page'),
        ` Page ${logFilters.page} of ${pages} · ${logs.total || 0} requests `,
        h('button', { type: 'button', disabled: logFilters.page >= pages, onclick: () => { logFilters.page += 1; rerender(); } }, 'Next page')));
  },
};

const auditFilters = { object_type: '', object_id: '', caller: '', start_time: '', end_time: '', page: 1 };

export const auditPage = {
  async render({ rerender }) {
    const res = await api('/audit', { query: { ...auditFilters, page_size: 50 } });
    const specs = [
      { name: 'object_type', label: 'Object type', type: 'select', value: auditFilters.object_type, options: [['', 'Any'], ...['key', 'team', 'user', 'organization', 'model', 'settings'].map(x => [x, x])] },
      { name: 'object_id', label: 'Object ID', value: auditFilters.object_id },
      { name: 'caller', label: 'Caller', value: auditFilters.caller, placeholder: 'user id or master_key' },
      { name: 'start_time', label: 'From', type: 'date', value: auditFilters.start_time },
      { name: 'end_time', label: 'Until (exclusive)', type: 'date', value: auditFilters.end_time },
    ];
    const filter = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log', onsubmit: ev => {
      ev.preventDefault();
      for (const s of specs) auditFilters[s.name] = ev.target.elements.namedItem(s.name).value.trim();
      auditFilters.page = 1;
      rerender();
    } }, specs.map(field), h('button', { type: 'submit' }, 'Apply filters'));
    const pages = Math.max(res.total_pages || 1, 1);
    const diff = e => h('details', {}, h('summary', {}, 'before / after'), h('pre', {}, JSON.stringify({ before: e.before, after: e.after }, null, 2)));
    return h('section', { 'aria-labelledby': 'audit-title' },
      h('div', { class: 'page-head' }, h('h1', { id: 'audit-title' }, 'Audit log')), filter,
      table([
        { label: 'Time', get: e => when(e.created_at) },
        { label: 'Action', get: e => e.action },
        { label: 'Object', get: e => `${e.object_type} ${e.object_id}` },
        { label: 'Caller', get: e => e.caller },
        { label: 'Changed by', get: e => e.changed_by || '—' },
        { label: 'Change', get: diff },
      ], res.audit_logs || [], 'Audit entries'),
      h('nav', { class: 'pager', 'aria-label': 'Audit pages' },
        h('button', { type: 'button', disabled: auditFilters.page <= 1, onclick: () => { auditFilters.page -= 1; rerender(); } }, 'Previous page'),
        ` Page ${auditFilters.page} of ${pages} · ${res.total || 0} entries `,
        h('button', { type: 'button', disabled: auditFilters.page >= pages, onclick: () => { auditFilters.page += 1; rerender(); } }, 'Next page')));
  },
};

export const proxiesPage = {
  async render({ rerender }) {
    const res = await api('/proxies');
    const now = Date.now();
    const stale = p => p.lag > 0 || (p.last_seen && now - Date.parse(p.last_seen) > 60e3);
    return h('section', { 'aria-labelledby': 'proxies-title' },
      h('div', { class: 'page-head' }, h('h1', { id: 'proxies-title' }, 'Proxies'),
        h('div', { class: 'head-actions' }, h('button', { type: 'button', onclick: () => rerender() }, 'Refresh'))),
      h('p', { class: 'hint' }, `Head revision ${res.head_revision}. Lag is head minus the revision the proxy reported persisted. Proxies disconnected within the last hour are listed as such; a proxy missing here has not synced from this control-plane replica in that time.`),
      table([
        { label: 'Proxy', get: p => p.proxy_id || '(no id)' },
        { label: 'State', get: p => !p.connected ? h('span', { class: 'tag bad' }, `disconnected ${when(p.disconnected_at)}`)
          : stale(p) ? h('span', { class: 'tag warn' }, 'behind') : h('span', { class: 'tag ok' }, 'current') },
        { label: 'Revision', get: p => String(p.applied_revision) },
        { label: 'Lag', get: p => String(p.lag) },
        { label: 'Last heard from', get: p => when(p.last_seen) },
        { label: 'Outbox depth', get: p => p.outbox_depth < 0 ? 'unknown' : String(p.outbox_depth) },
        { label: 'Last spend batch', get: p => when(p.last_spend_batch) },
        { label: 'Connected since', get: p => when(p.connected_at) },
        { label: 'Peer', get: p => p.peer },
        { label: 'Version', get: p => p.version || '—' },
      ], res.proxies || [], 'Proxies'));
  },
};
