// DOM helpers. Everything is built with createElement and textContent:
// no HTML strings, so no data from the API is ever parsed as markup.

let uid = 0;
export function nextId(prefix) { uid += 1; return `${prefix}-${uid}`; }

// h(tag, attrs, ...children): attrs may hold on<Event> handlers, class,
// dataset and boolean attributes.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

export function usd(v) {
  if (v === undefined || v === null || v === '') return '—';
  const n = Number(v);
  return '$' + (Math.abs(n) < 0.01 && n !== 0 ? n.toFixed(9).replace(/0{1,3}$/, '') : n.toFixed(2)); // nano-USD precision, at least 6 decimals
}

export function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  if (isNaN(d)) return String(ts);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function list(v) { return Array.isArray(v) && v.length ? v.join(', ') : '—'; }

// budget renders spend against a hard (max) and soft budget as a <meter>
// whose "high" mark is the soft budget, plus the figures in text.
export function budget(spend, max, soft) {
  const s = Number(spend || 0);
  const text = max != null ? `${usd(s)} of ${usd(max)}` + (soft != null ? ` (soft ${usd(soft)})` : '') :
    `${usd(s)}` + (soft != null ? ` (soft ${usd(soft)})` : ' (no budget)');
  if (max == null && soft == null) return h('span', { class: 'budget' }, text);
  const top = max != null ? Number(max) : Number(soft) * 1.25 || 1;
  const m = h('meter', { min: 0, max: top, value: Math.min(s, top), 'aria-label': 'spend ' + text });
  if (soft != null) { m.high = Number(soft); m.optimum = 0; m.low = Number(soft) * 0.8; }
  else { m.high = top * 0.8; m.optimum = 0; m.low = top * 0.5; }
  const over = max != null && s >= Number(max) ? ' over' : (soft != null && s >= Number(soft) ? ' soft' : '');
  return h('span', { class: 'budget' + over }, m, ' ', text);
}

// table(columns, rows, caption): columns are {label, get(row) -> Node|string}.
export function table(columns, rows, caption) {
  const t = h('table', { class: 'grid' });
  if (caption) t.append(h('caption', {}, caption));
  t.append(h('thead', {}, h('tr', {}, columns.map(c => h('th', { scope: 'col' }, c.label)))));
  const body = h('tbody');
  if (!rows.length) body.append(h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, 'Nothing to show.')));
  for (const r of rows) body.append(h('tr', {}, columns.map(c => h('td', { dataset: { col: c.label } }, c.get(r) ?? '—'))));
  t.append(body);
  return h('div', { class: 'table-wrap' }, t);
}

// field builds a labelled control from a spec:
// {name, label, type: text|password|number|list|json|bool|select|datetime|textarea, options, value, help, required}
export function field(spec) {
  const id = nextId('f-' + spec.name);
  const helpId = spec.help ? id + '-help' : undefined;
  let input;
  const common = { id, name: spec.name, 'aria-describedby': helpId, required: spec.required };
  switch (spec.type) {
    case 'bool':
      input = h('input', { ...common, type: 'checkbox', checked: !!spec.value });
      return h('div', { class: 'field check' }, input, h('label', { for: id }, spec.label),
        spec.help ? h('small', { id: helpId }, spec.help) : null);
    case 'select':
      input = h('select', common, (spec.options || []).map(o => {
        const [v, l] = Array.isArray(o) ? o : [o, o || '(none)'];
        return h('option', { value: v, selected: v === spec.value }, l);
      }));
      break;
    case 'json':
    case 'textarea':
      input = h('textarea', { ...common, rows: spec.rows || 3, spellcheck: 'false', placeholder: spec.placeholder },
        spec.value == null ? '' : (spec.type === 'json' && typeof spec.value !== 'string' ? JSON.stringify(spec.value, null, 2) : spec.value));
      break;
    case 'number':
      input = h('input', { ...common, type: 'number', step: spec.step || 'any', min: spec.min, value: spec.value ?? '', placeholder: spec.placeholder });
      break;
    case 'datetime':
      input = h('input', { ...common, type: 'datetime-local', value: spec.value ?? '' });
      break;
    case 'list':
      input = h('input', { ...common, type: 'text', value: Array.isArray(spec.value) ? spec.value.join(', ') : (spec.value ?? ''), placeholder: spec.placeholder || 'comma-separated' });
      break;
    default:
      input = h('input', { ...common, type: spec.type || 'text', value: spec.value ?? '', placeholder: spec.placeholder, autocomplete: 'off', spellcheck: 'false' });
  }
  return h('div', { class: 'field' }, h('label', { for: id }, spec.label), input, spec.help ? h('small', { id: helpId }, spec.help) : null);
}

// collect reads a form built from specs: empty values are left out (the
// API's defaults apply); with keepEmpty, an emptied field is sent as null so
// an update clears it.
export function collect(form, specs, keepEmpty) {
  const out = {};
  for (const s of specs) {
    const el = form.elements.namedItem(s.name);
    if (!el) continue;
    if (s.type === 'bool') { if (el.checked || keepEmpty || s.sendFalse) out[s.name] = el.checked; continue; }
    const raw = el.value.trim();
    if (raw === '') { if (keepEmpty && s.clearable !== false) out[s.name] = null; continue; }
    switch (s.type) {
      case 'number': {
        const n = Number(raw);
        if (!Number.isFinite(n)) throw new Error(`${s.label}: not a number`);
        out[s.name] = s.integer ? Math.trunc(n) : n;
        break;
      }
      case 'list': out[s.name] = raw.split(',').map(x => x.trim()).filter(Boolean); break;
      case 'json':
        try { out[s.name] = JSON.parse(raw); } catch { throw new Error(`${s.label}: not valid JSON`); }
        break;
      case 'datetime': out[s.name] = new Date(raw).toISOString(); break;
      default: out[s.name] = raw;
    }
  }
  return out;
}

// dialog opens a modal <dialog> (focus is trapped and Escape closes it, by
// the browser) and resolves with the result of onSubmit, or null.
export function dialog(title, body, { submitLabel = 'Save', danger = false, onSubmit, cancelLabel = 'Cancel', ref } = {}) {
  return new Promise(resolve => {
    const titleId = nextId('dlg');
    const err = h('p', { class: 'error', role: 'alert' });
    const form = h('form', { method: 'dialog', class: 'dialog-form' }, body, err,
      h('div', { class: 'actions' },
        onSubmit ? h('button', { type: 'submit', class: danger ? 'danger' : 'primary', value: 'ok' }, submitLabel) : null,
        h('button', { type: 'button', value: 'cancel', onclick: () => { d.close(); } }, onSubmit ? cancelLabel : 'Close')));
    const d = h('dialog', { 'aria-labelledby': titleId }, h('h2', { id: titleId }, title), form);
    let result = null;
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      if (!onSubmit) { d.close(); return; }
      err.textContent = '';
      try {
        result = await onSubmit(form);
        d.close();
      } catch (e) {
        err.textContent = e.message || String(e);
      }
    });
    d.addEventListener('close', () => { d.remove(); resolve(result); });
    document.body.append(d);
    if (ref) ref.el = d;
    d.showModal();
  });
}

export function confirmDialog(title, text, label = 'Delete') {
  return dialog(title, h('p', {}, text), { submitLabel: label, danger: true, onSubmit: async () => true });
}
