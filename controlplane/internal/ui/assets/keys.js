// Keys: list with search, filters and pages; create (personal or service
// account), edit limits, block/unblock, regenerate, delete.
import { h, table, field, collect, dialog, confirmDialog, usd, when, list, budget } from './dom.js';
import { api, me, canWrite, isAdmin, notify } from './app.js';

const filters = { search: '', user_id: '', team_id: '', key_alias: '', status: 'all', page: 1, size: 25 };

// Every /key/generate field; the common ones first, the rest under
// "More options". Empty fields are not sent, so the API's defaults apply.
export function keySpecs(serviceAccount) {
  // A service-account key needs a team the caller administers.
  const adminTeams = Object.entries(me().teams || {}).filter(([, r]) => r === 'admin').map(([t]) => t);
  return {
    basic: [
      { name: 'key_alias', label: 'Key alias', help: 'A name to find the key by.' },
      serviceAccount ? { name: 'team_id', label: 'Team ID', required: true, help: 'Service-account keys belong to a team and no user.', value: adminTeams[0] || '' }
        : { name: 'team_id', label: 'Team ID (optional)', value: '' },
      serviceAccount ? null : { name: 'user_id', label: 'User ID (optional)', help: isAdmin() ? 'Empty: the key has no owner user.' : 'Your own keys are stamped with your user id.' },
      { name: 'models', label: 'Models', type: 'list', help: 'Comma-separated; empty: every model the owner may use.' },
      { name: 'duration', label: 'Expires after', placeholder: 'e.g. 30d, 12h, 1mo (empty: never)' },
      { name: 'max_budget', label: 'Max budget (USD)', type: 'number', min: 0 },
      { name: 'budget_duration', label: 'Budget period', placeholder: 'e.g. 30d (empty: lifetime)' },
      { name: 'rpm_limit', label: 'Requests per minute', type: 'number', integer: true, min: 0 },
      { name: 'tpm_limit', label: 'Tokens per minute', type: 'number', integer: true, min: 0 },
    ].filter(Boolean),
    more: [
      { name: 'soft_budget', label: 'Soft budget (USD)', type: 'number', min: 0, help: 'Crossing it sends an alert; requests continue.' },
      { name: 'max_parallel_requests', label: 'Max parallel requests', type: 'number', integer: true, min: 0 },
      { name: 'organization_id', label: 'Organization ID' },
      { name: 'expires', label: 'Expires at (absolute)', type: 'datetime', help: '"Expires after" wins when both are set.' },
      { name: 'model_max_budget', label: 'Per-model budgets (JSON)', type: 'json', placeholder: '{"gpt-4o": {"max_budget": 10, "budget_duration": "30d"}}' },
      { name: 'model_rpm_limit', label: 'Per-model RPM (JSON)', type: 'json', placeholder: '{"gpt-4o": 10}' },
      { name: 'model_tpm_limit', label: 'Per-model TPM (JSON)', type: 'json', placeholder: '{"gpt-4o": 10000}' },
      { name: 'enforced_params', label: 'Enforced params', type: 'list', placeholder: 'e.g. user' },
      { name: 'allowed_routes', label: 'Allowed routes', type: 'list', placeholder: 'e.g. /chat/completions' },
      { name: 'tags', label: 'Tags', type: 'list' },
      { name: 'guardrails', label: 'Guardrails', type: 'list' },
      { name: 'metadata', label: 'Metadata (JSON)', type: 'json', placeholder: '{"owner": "data-team"}' },
      { name: 'permissions', label: 'Permissions (JSON)', type: 'json' },
      { name: 'blocked', label: 'Create blocked', type: 'bool' },
      { name: 'auto_rotate', label: 'Rotate automatically', type: 'bool' },
      { name: 'rotation_interval', label: 'Rotation interval', placeholder: 'e.g. 30d' },
      { name: 'key', label: 'Custom secret', type: 'password', help: 'Leave empty to generate one (recommended). Must start with sk-.' },
    ],
  };
}

// showSecret shows a new secret once, with a copy button and a warning.
export function showSecret(title, secret, extra) {
  const out = h('output', { id: 'new-secret', class: 'secret', 'aria-label': 'New secret key' }, secret);
  const copied = h('span', { role: 'status', class: 'hint' });
  const copy = h('button', { type: 'button', class: 'primary', id: 'copy-secret', onclick: async () => {
    try { await navigator.clipboard.writeText(secret); copied.textContent = 'Copied to the clipboard.'; }
    catch { copied.textContent = 'Copy failed: select the key and copy it by hand.'; }
  } }, 'Copy key');
  return dialog(title, h('div', {},
    h('p', { class: 'warning', role: 'alert' }, 'Copy this key now. It is shown only once: Tollgate stores only its hash and cannot show it again.'),
    h('div', { class: 'secret-row' }, out, copy), copied, extra || null), {});
}

async function createKey(serviceAccount, rerender) {
  const specs = keySpecs(serviceAccount);
  const all = [...specs.basic, ...specs.more];
  const body = h('div', {}, h('div', { class: 'form-grid' }, specs.basic.map(field)),
    h('details', {}, h('summary', {}, 'More options'), h('div', { class: 'form-grid' }, specs.more.map(field))));
  const created = await dialog(serviceAccount ? 'New service-account key' : 'New key', body, {
    submitLabel: 'Create key',
    onSubmit: async form => api(serviceAccount ? '/key/service-account/generate' : '/key/generate', { method: 'POST', body: collect(form, all) }),
  });
  if (!created) return;
  await showSecret(`Key ${created.key_alias || created.key_name} created`, created.key);
  rerender();
}

async function editKey(k, rerender) {
  const specs = [
    { name: 'key_alias', label: 'Key alias', value: k.key_alias },
    { name: 'models', label: 'Models', type: 'list', value: k.models },
    { name: 'max_budget', label: 'Max budget (USD)', type: 'number', value: k.max_budget },
    { name: 'soft_budget', label: 'Soft budget (USD)', type: 'number', value: k.soft_budget },
    { name: 'budget_duration', label: 'Budget period', value: k.budget_duration },
    { name: 'rpm_limit', label: 'Requests per minute', type: 'number', integer: true, value: k.rpm_limit },
    { name: 'tpm_limit', label: 'Tokens per minute', type: 'number', integer: true, value: k.tpm_limit },
    { name: 'max_parallel_requests', label: 'Max parallel requests', type: 'number', integer: true, value: k.max_parallel_requests },
    { name: 'duration', label: 'New expiry from now', placeholder: 'e.g. 30d (empty: unchanged)', clearable: false },
    { name: 'metadata', label: 'Metadata (JSON)', type: 'json', value: k.metadata, clearable: false },
  ];
  const done = await dialog(`Edit key ${k.key_alias || k.key_name}`, h('div', { class: 'form-grid' }, specs.map(field)), {
    submitLabel: 'Save',
    onSubmit: async form => {
      const body = collect(form, specs);
      if (!('models' in body) && (k.models || []).length) body.models = []; // emptied: every model
      return api('/key/update', { method: 'POST', body: { key: k.token_id, ...body } });
    },
  });
  if (done) { notify('Key updated.'); rerender(); }
}

// sessionKey: the key this session signed in with (changing it ends the
// session once the old secret stops working).
const sessionKey = k => me().key_token_id && k.token_id === me().key_token_id;
const sessionWarning = 'This is the key you signed in with: this session ends when its secret stops working.';

async function regenerate(k, rerender) {
  const specs = [{ name: 'grace_period', label: 'Grace period for the old secret', placeholder: 'e.g. 24h (empty: the old secret stops now)' }];
  const res = await dialog(`Regenerate ${k.key_alias || k.key_name}`, h('div', {}, h('p', {}, 'A new secret replaces the current one; alias and limits are kept.'),
    sessionKey(k) ? h('p', { class: 'warning' }, sessionWarning) : null, specs.map(field)), {
    submitLabel: 'Regenerate', danger: true,
    onSubmit: async form => api('/key/regenerate', { method: 'POST', body: { key: k.token_id, ...collect(form, specs) } }),
  });
  if (!res) return;
  await showSecret(`New secret for ${res.key_alias || res.key_name}`, res.key);
  rerender();
}

function status(k) {
  if (k.blocked) return h('span', { class: 'tag bad' }, 'blocked');
  if (k.expires && new Date(k.expires) <= new Date()) return h('span', { class: 'tag bad' }, 'expired');
  if (k.expires && new Date(k.expires) - new Date() < 7 * 86400e3) return h('span', { class: 'tag warn' }, 'expiring');
  return h('span', { class: 'tag ok' }, 'active');
}

export async function render({ rerender }) {
  // Every filter is applied by the API, so pages and counts are of the
  // filtered keys. "Expiring" is an expiry within 7 days, expired ones
  // included (they are marked in the status column).
  const statusQuery = {
    all: {}, active: { blocked: 'false' }, blocked: { blocked: 'true' },
    expiring: { expires_before: new Date(Date.now() + 7 * 86400e3).toISOString() },
  }[filters.status] || {};
  const res = await api('/key/list', { query: {
    page: filters.page, size: filters.size, user_id: filters.user_id, team_id: filters.team_id,
    key_alias: filters.key_alias, search: filters.search, return_full_object: 'true', ...statusQuery,
  } });
  const rows = res.keys_full || [];
  const write = canWrite();
  const act = async (fn, okMsg) => { try { await fn(); notify(okMsg); rerender(); } catch (e) { notify(e.message, 'error'); } };
  const teamAdminOf = Object.entries(me().teams || {}).some(([, r]) => r === 'admin');

  const filterSpecs = [
    { name: 'search', label: 'Search', type: 'search', value: filters.search, placeholder: 'alias, key name, user, team, tag' },
    { name: 'user_id', label: 'User', value: filters.user_id },
    { name: 'team_id', label: 'Team', value: filters.team_id },
    { name: 'key_alias', label: 'Alias (exact)', value: filters.key_alias },
    { name: 'status', label: 'Status', type: 'select', value: filters.status, options: [['all', 'All'], ['active', 'Not blocked'], ['blocked', 'Blocked'], ['expiring', 'Expiring within 7 days or expired']] },
  ];
  const filterForm = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter keys', onsubmit: ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    for (const s of filterSpecs) filters[s.name] = f.namedItem(s.name).value.trim();
    filters.page = 1;
    rerender();
  } }, filterSpecs.map(field), h('button', { type: 'submit' }, 'Apply filters'));

  const cols = [
    { label: 'Alias', get: k => k.key_alias || '—' },
    { label: 'Key', get: k => h('code', {}, k.key_name) },
    { label: 'Owner', get: k => k.service_account ? 'service account' : (k.user_id || '—') },
    { label: 'Team', get: k => k.team_id || '—' },
    { label: 'Models', get: k => list(k.models) },
    { label: 'Spend / budget', get: k => budget(k.spend, k.max_budget, k.soft_budget) },
    { label: 'Limits', get: k => [k.rpm_limit != null ? `${k.rpm_limit} rpm` : null, k.tpm_limit != null ? `${k.tpm_limit} tpm` : null].filter(Boolean).join(', ') || '—' },
    { label: 'Expires', get: k => when(k.expires) },
    { label: 'Status', get: status },
  ];
  if (write) cols.push({ label: 'Actions', get: k => h('div', { class: 'row-actions' },
    h('button', { type: 'button', onclick: () => editKey(k, rerender), 'aria-label': `Edit ${k.key_alias || k.key_name}` }, 'Edit'),
    k.blocked
      ? h('button', { type: 'button', 'aria-label': `Unblock ${k.key_alias || k.key_name}`, onclick: () => act(() => api('/key/unblock', { method: 'POST', body: { key: k.token_id } }), 'Key unblocked.') }, 'Unblock')
      : h('button', { type: 'button', 'aria-label': `Block ${k.key_alias || k.key_name}`, onclick: async () => {
        if (sessionKey(k) && !await confirmDialog('Block the key you signed in with', sessionWarning, 'Block')) return;
        act(() => api('/key/block', { method: 'POST', body: { key: k.token_id } }), 'Key blocked.');
      } }, 'Block'),
    h('button', { type: 'button', 'aria-label': `Regenerate ${k.key_alias || k.key_name}`, onclick: () => regenerate(k, rerender) }, 'Regenerate'),
    h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${k.key_alias || k.key_name}`, onclick: async () => {
      if (await confirmDialog('Delete key', `Delete ${k.key_alias || k.key_name}? Requests with it fail at once. This cannot be undone.` + (sessionKey(k) ? ' ' + sessionWarning : ''))) {
        act(() => api('/key/delete', { method: 'POST', body: { keys: [k.token_id] } }), 'Key deleted.');
      }
    } }, 'Delete')) });

  const pager = h('nav', { class: 'pager', 'aria-label': 'Key pages' },
    h('button', { type: 'button', disabled: filters.page <= 1, onclick: () => { filters.page -= 1; rerender(); } }, 'Previous page'),
    h('span', {}, ` Page ${res.current_page || filters.page} of ${Math.max(res.total_pages || 1, 1)} · ${res.total_count || 0} keys `),
    h('button', { type: 'button', disabled: filters.page >= (res.total_pages || 1), onclick: () => { filters.page += 1; rerender(); } }, 'Next page'));

  return h('section', { 'aria-labelledby': 'keys-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'keys-title' }, 'Keys'),
      write ? h('div', { class: 'head-actions' },
        h('button', { type: 'button', class: 'primary', id: 'new-key', onclick: () => createKey(false, rerender) }, 'New key'),
        (isAdmin() || teamAdminOf) ? h('button', { type: 'button', id: 'new-sa-key', onclick: () => createKey(true, rerender) }, 'New service-account key') : null) : null),
    filterForm,
    res.truncated ? h('p', { class: 'warning', role: 'status' }, 'Search and status looked at the first 10,000 keys only: narrow the list with a user or team.') : null,
    table(cols, rows, 'Keys visible to you'),
    pager);
}
