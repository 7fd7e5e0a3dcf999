"""The web view's stylesheet and script, as text (they ship inside the package, no CDN, no build step).

Internal module (its layout may change).

The script is hil's own: a canvas line plot with axes, log scales, a band (min-max of array
columns), a hover readout and drag-to-zoom (double-click resets); the stream plots of the run page;
and the live page's server-sent-events client. It writes untrusted text (run ids, column names,
notes) into the page only through ``textContent``, never as HTML.
"""

from __future__ import annotations

CSS = r"""
:root { --fg: #1b1f24; --muted: #5d6670; --line: #d7dce1; --bg: #fff; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg);
       margin: 0; }
header.top { background: #16324f; color: #fff; padding: 8px 18px; display: flex; gap: 18px; align-items: baseline; }
header.top a { color: #fff; text-decoration: none; font-weight: 600; }
header.top .folder { color: #c9d6e3; font-size: 12px; }
main { padding: 12px 18px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 12px; word-break: break-all; }
h2 { font-size: 16px; margin: 22px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 3px; }
h3 { font-size: 14px; margin: 14px 0 6px; word-break: break-all; }
table { border-collapse: collapse; }
table.runs { width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 180px; background: none; color: var(--muted); font-weight: normal; }
td.value, table.kv td { word-break: break-word; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
pre { background: #f6f8fa; padding: 8px; overflow: auto; max-height: 420px; }
a { color: var(--accent); }
.status { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600;
          background: #e6e9ed; color: #333; }
.status-success { background: #d8f0dd; color: #185c2b; }
.status-running { background: #dbe9fb; color: #1a4f8f; }
.status-fail { background: #fadcdc; color: #8c1c1c; }
.status-abort, .status-incomplete { background: #fbecd0; color: #7a4b00; }
form.filters { display: flex; gap: 10px; flex-wrap: wrap; align-items: end; margin: 4px 0 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.tag { display: inline-block; background: #eef1f4; border-radius: 3px; padding: 0 5px; margin-right: 3px; font-size: 12px; }
.figures img { max-width: 100%; border: 1px solid var(--line); margin: 6px 0; display: block; }
.problem, .error { color: #8c1c1c; }
.error-box { border: 1px solid #e4b4b4; background: #fdf1f1; padding: 10px 14px; }
.muted { color: var(--muted); }
.plot { position: relative; border: 1px solid var(--line); margin: 6px 0 4px; }
.plot canvas { display: block; width: 100%; height: 300px; cursor: crosshair; }
.plot .readout { position: absolute; top: 4px; right: 8px; background: rgba(255,255,255,.92); font-size: 12px;
                 padding: 2px 6px; border: 1px solid var(--line); pointer-events: none; white-space: pre; }
.controls { display: flex; gap: 12px; align-items: center; font-size: 13px; flex-wrap: wrap; }
.live-numbers { display: flex; gap: 28px; align-items: baseline; margin: 6px 0 10px; }
.live-numbers .big { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
"""

JS = r"""
'use strict';
(function () {
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '-';
    if (typeof v !== 'number') return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3);
    return String(Number(v.toPrecision(5)));
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { return [lo]; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => raw <= s) || 10 * mag;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }

  // A canvas line plot: series [{y, lo, hi}] against x; log axes; hover readout; drag to zoom, double-click resets.
  class HilPlot {
    constructor(parent) {
      this.box = document.createElement('div');
      this.box.className = 'plot';
      this.canvas = document.createElement('canvas');
      this.readout = document.createElement('div');
      this.readout.className = 'readout';
      this.readout.textContent = 'hover for values; drag to zoom; double-click resets';
      this.box.append(this.canvas, this.readout);
      parent.append(this.box);
      this.data = null; this.logX = false; this.logY = false; this.view = null; this.hover = -1; this.drag = null;
      this.canvas.addEventListener('mousemove', e => this.onMove(e));
      this.canvas.addEventListener('mouseleave', () => { this.hover = -1; this.drag = null; this.draw(); });
      this.canvas.addEventListener('mousedown', e => { this.drag = { x0: this.px(e), x1: this.px(e) }; });
      this.canvas.addEventListener('mouseup', e => this.onUp(e));
      this.canvas.addEventListener('dblclick', () => { this.view = null; this.draw(); });
      window.addEventListener('resize', () => this.draw());
    }
    px(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }
    set(data) { this.data = data; this.draw(); }
    tx(v) { return this.logX ? (v > 0 ? Math.log10(v) : NaN) : v; }
    ty(v) { return this.logY ? (v > 0 ? Math.log10(v) : NaN) : v; }
    ranges() {
      const d = this.data; let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (let i = 0; i < d.x.length; i++) {
        const x = this.tx(d.x[i]);
        if (!Number.isFinite(x)) continue;
        if (x < x0) x0 = x; if (x > x1) x1 = x;
      }
      if (this.view) { x0 = this.view[0]; x1 = this.view[1]; }
      for (let i = 0; i < d.x.length; i++) {
        const x = this.tx(d.x[i]);
        if (!(x >= x0 && x <= x1)) continue;
        for (const v of [d.y[i], d.lo ? d.lo[i] : null, d.hi ? d.hi[i] : null]) {
          if (v === null || v === undefined) continue;
          const y = this.ty(v);
          if (!Number.isFinite(y)) continue;
          if (y < y0) y0 = y; if (y > y1) y1 = y;
        }
      }
      if (!Number.isFinite(x0)) { x0 = 0; x1 = 1; }
      if (!Number.isFinite(y0)) { y0 = 0; y1 = 1; }
      if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
      if (y1 === y0) { const p = Math.abs(y0) * 0.05 || 0.5; y0 -= p; y1 += p; }
      const py = (y1 - y0) * 0.04;
      return [x0, x1, y0 - py, y1 + py];
    }
    draw() {
      const c = this.canvas, dpr = window.devicePixelRatio || 1;
      const W = c.clientWidth || 600, H = c.clientHeight || 300;
      c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
      const g = c.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, W, H);
      g.font = '11px system-ui, sans-serif';
      const d = this.data;
      if (!d || !d.x.length) { g.fillStyle = '#5d6670'; g.fillText(this.emptyText || 'no rows yet', 60, 40); return; }
      const L = 64, R = 12, T = 10, B = 38, pw = W - L - R, ph = H - T - B;
      const [x0, x1, y0, y1] = this.ranges();
      this.frame = { L, T, pw, ph, x0, x1, y0, y1 };
      const sx = v => L + (v - x0) / (x1 - x0) * pw, sy = v => T + ph - (v - y0) / (y1 - y0) * ph;
      g.strokeStyle = '#d7dce1'; g.fillStyle = '#333'; g.lineWidth = 1;
      const decades = (lo, hi, n) => niceTicks(Math.floor(lo), Math.ceil(hi), Math.min(n, Math.ceil(hi) - Math.floor(lo) || 1))
        .filter(t => Number.isInteger(t) && t >= lo && t <= hi);
      const ticks = (lo, hi, log, n) => log ? decades(lo, hi, n) : niceTicks(lo, hi, n);
      const lab = (t, log) => log ? fmt(Math.pow(10, t)) : fmt(t);
      g.textAlign = 'center';
      for (const t of ticks(x0, x1, this.logX, 7)) {
        g.beginPath(); g.moveTo(sx(t), T); g.lineTo(sx(t), T + ph); g.stroke();
        g.fillText(lab(t, this.logX), sx(t), T + ph + 14);
      }
      g.textAlign = 'right';
      for (const t of ticks(y0, y1, this.logY, 5)) {
        g.beginPath(); g.moveTo(L, sy(t)); g.lineTo(L + pw, sy(t)); g.stroke();
        g.fillText(lab(t, this.logY), L - 5, sy(t) + 4);
      }
      g.strokeStyle = '#888'; g.strokeRect(L, T, pw, ph);
      g.textAlign = 'center'; g.fillText(d.xLabel || '', L + pw / 2, H - 6);
      g.save(); g.translate(12, T + ph / 2); g.rotate(-Math.PI / 2); g.fillText(d.yLabel || '', 0, 0); g.restore();
      g.save(); g.beginPath(); g.rect(L, T, pw, ph); g.clip();
      const pts = [];
      for (let i = 0; i < d.x.length; i++) {
        const X = this.tx(d.x[i]), Y = d.y[i] === null ? NaN : this.ty(d.y[i]);
        pts.push([Number.isFinite(X) ? sx(X) : NaN, Number.isFinite(Y) ? sy(Y) : NaN]);
      }
      this.pts = pts;
      if (d.lo && d.hi) {
        g.fillStyle = 'rgba(31,95,168,0.18)'; g.beginPath(); let open = false;
        const lo = [], hi = [];
        for (let i = 0; i < d.x.length; i++) {
          const X = this.tx(d.x[i]), a = d.lo[i] === null ? NaN : this.ty(d.lo[i]);
          const b = d.hi[i] === null ? NaN : this.ty(d.hi[i]);
          if (Number.isFinite(X) && Number.isFinite(a) && Number.isFinite(b)) {
            lo.push([sx(X), sy(a)]); hi.push([sx(X), sy(b)]);
          }
        }
        for (const p of lo) { if (!open) { g.moveTo(p[0], p[1]); open = true; } else g.lineTo(p[0], p[1]); }
        for (const p of hi.reverse()) g.lineTo(p[0], p[1]);
        if (open) { g.closePath(); g.fill(); }
      }
      g.strokeStyle = '#1f5fa8'; g.lineWidth = 1.4; g.beginPath(); let pen = false;
      for (const [X, Y] of pts) {
        if (!Number.isFinite(X) || !Number.isFinite(Y)) { pen = false; continue; }
        if (pen) g.lineTo(X, Y); else { g.moveTo(X, Y); pen = true; }
      }
      g.stroke();
      if (pts.length <= 300) {
        g.fillStyle = '#1f5fa8';
        for (const [X, Y] of pts) if (Number.isFinite(X) && Number.isFinite(Y)) g.fillRect(X - 1.5, Y - 1.5, 3, 3);
      }
      if (this.hover >= 0 && this.hover < pts.length) {
        const [X, Y] = pts[this.hover];
        g.strokeStyle = '#c0392b'; g.beginPath(); g.moveTo(X, T); g.lineTo(X, T + ph); g.stroke();
        g.beginPath(); g.arc(X, Y, 4, 0, 2 * Math.PI); g.stroke();
      }
      if (this.drag && Math.abs(this.drag.x1 - this.drag.x0) > 2) {
        g.fillStyle = 'rgba(0,0,0,0.08)';
        g.fillRect(Math.min(this.drag.x0, this.drag.x1), T, Math.abs(this.drag.x1 - this.drag.x0), ph);
      }
      g.restore();
    }
    onMove(e) {
      if (!this.pts || !this.data) return;
      const X = this.px(e);
      if (this.drag) { this.drag.x1 = X; }
      let best = -1, dist = Infinity;
      for (let i = 0; i < this.pts.length; i++) {
        const p = this.pts[i];
        if (!Number.isFinite(p[0]) || !Number.isFinite(p[1])) continue;
        if (this.frame && (p[0] < this.frame.L - 1 || p[0] > this.frame.L + this.frame.pw + 1)) continue;  // zoomed out of view
        const dd = Math.abs(p[0] - X);
        if (dd < dist) { dist = dd; best = i; }
      }
      this.hover = best;
      if (best >= 0) {
        const d = this.data;
        let text = `${d.rowLabel || 'row'} ${d.rows[best]}\n${d.xLabel} = ${fmt(d.x[best])}\n${d.yLabel} = ${fmt(d.y[best])}`;
        if (d.lo && d.hi) text += `\nmin ${fmt(d.lo[best])}  max ${fmt(d.hi[best])}`;
        this.readout.textContent = text;
      }
      this.draw();
    }
    onUp(e) {
      if (this.drag && this.frame && Math.abs(this.drag.x1 - this.drag.x0) > 5) {
        const f = this.frame, v = p => f.x0 + (p - f.L) / f.pw * (f.x1 - f.x0);
        const a = v(Math.min(this.drag.x0, this.drag.x1)), b = v(Math.max(this.drag.x0, this.drag.x1));
        if (b > a) this.view = [a, b];
      }
      this.drag = null; this.draw();
    }
  }

  // One stream's interactive plot: a column selector, log scales, data from the JSON API or the live events.
  class StreamPlot {
    constructor(el) {
      this.el = el; this.payload = null;
      const controls = document.createElement('div'); controls.className = 'controls';
      const label = document.createElement('label'); label.textContent = 'column ';
      this.select = document.createElement('select'); this.select.className = 'column-select';
      label.append(this.select);
      this.logx = this.checkbox(controls, 'log x'); this.logy = this.checkbox(controls, 'log y');
      controls.prepend(label);
      this.info = document.createElement('span'); this.info.className = 'muted rows-info';
      controls.append(this.info);
      el.append(controls);
      this.plot = new HilPlot(el);
      this.select.addEventListener('change', () => this.render());
    }
    checkbox(parent, text) {
      const l = document.createElement('label'), c = document.createElement('input');
      c.type = 'checkbox'; l.append(c, document.createTextNode(' ' + text)); parent.append(l);
      c.addEventListener('change', () => this.render());
      return c;
    }
    numeric(p) {
      return p.order.filter(n => p.columns[n] && (p.columns[n].kind === 'scalar' || p.columns[n].kind === 'array') && n !== p.x);
    }
    set(p) {
      this.payload = p;
      const names = this.numeric(p), keep = this.select.value;
      if (names.join('\u0000') !== this.names) {
        this.names = names.join('\u0000');
        this.select.textContent = '';
        // The first column worth a look: an array column, else a float column, else any user column.
        const user = names.filter(n => !n.startsWith('_'));
        const rank = n => p.columns[n].kind === 'array' ? 0 : (p.columns[n].dtype === 'f' ? 1 : 2);
        const chosen = (user.length ? user : names).slice().sort((a, b) => rank(a) - rank(b));
        for (const n of names) {
          const o = document.createElement('option'); o.value = n; o.textContent = n; this.select.append(o);
        }
        this.select.value = names.includes(keep) ? keep : (chosen[0] || '');
      }
      this.render();
    }
    append(p) {
      if (!this.payload || p.start !== this.payload.rows) { this.set(p); return; }
      const q = this.payload;
      q.row = q.row.concat(p.row); q.rows = p.rows;
      for (const [n, c] of Object.entries(p.columns)) {
        const old = q.columns[n];
        if (!old || old.kind !== c.kind) { q.columns[n] = c; continue; }
        for (const k of ['values', 'min', 'max']) if (c[k]) old[k] = (old[k] || []).concat(c[k]);
      }
      this.set(q);
    }
    render() {
      const p = this.payload; if (!p) return;
      const name = this.select.value, col = p.columns[name];
      this.info.textContent = `${p.rows} rows` + (p.row.length < p.rows ? ` (${p.row.length} shown)` : '');
      this.plot.logX = this.logx.checked; this.plot.logY = this.logy.checked;
      if (!col) { this.plot.emptyText = p.rows ? 'no numeric column to plot' : 'no rows yet'; this.plot.set(null); return; }
      const xc = p.x && p.columns[p.x] && p.columns[p.x].kind === 'scalar' ? p.columns[p.x] : null;
      this.plot.set({
        x: xc ? xc.values.map(v => v === null ? NaN : v) : p.row, rows: p.row, rowLabel: p.row_dim,
        xLabel: xc ? (p.labels[p.x] || p.x) : `${p.row_dim} (order logged)`,
        y: col.values, lo: col.kind === 'array' ? col.min : null, hi: col.kind === 'array' ? col.max : null,
        yLabel: (p.labels[name] || name) + (col.kind === 'array' ? ' (mean, min-max band)' : ''),
      });
    }
  }

  function statusBadge(el, status) {
    el.textContent = status; el.className = 'status status-' + status.replace(/[^a-z]/g, '');
  }

  function runPage() {
    for (const el of document.querySelectorAll('.stream-plot[data-src]')) {
      const sp = new StreamPlot(el);
      fetch(el.dataset.src, { credentials: 'same-origin' })
        .then(r => r.ok ? r.json() : r.text().then(t => { throw new Error(t); }))
        .then(p => sp.set(p))
        .catch(err => {
          const m = document.createElement('p'); m.className = 'error'; m.textContent = String(err); el.append(m);
        });
    }
  }

  function livePage() {
    const live = document.getElementById('live');
    if (!live) return;
    const plots = {}, holder = document.getElementById('live-plots'), tbody = document.getElementById('stream-rows');
    const conn = document.getElementById('connection');
    const es = new EventSource(live.dataset.events);
    function apply(msg) {
      const s = msg.state;
      statusBadge(document.getElementById('status'), s.effective_status);
      let total = 0;
      for (const [name, n] of Object.entries(s.streams)) {
        total += n;
        let tr = tbody.querySelector(`tr[data-stream="${CSS.escape(name)}"]`);
        if (!tr) {
          tr = document.createElement('tr'); tr.dataset.stream = name;
          const a = document.createElement('td'), b = document.createElement('td');
          a.textContent = name; b.className = 'num rows'; tr.append(a, b); tbody.append(tr);
        }
        tr.querySelector('.rows').textContent = String(n);
      }
      document.getElementById('row-count').textContent = String(total);
      const end = s.stopped_unix > 0 ? s.stopped_unix : Date.now() / 1000;
      const elapsed = document.getElementById('elapsed');
      if (s.started_unix > 0) elapsed.textContent = Math.max(0, end - s.started_unix).toFixed(1) + ' s';
      document.getElementById('last-note').textContent = s.last_note || '';
      document.getElementById('exception').textContent = s.exception || '';
      for (const [name, p] of Object.entries(msg.data || {})) {
        if (!plots[name]) {
          const sec = document.createElement('section'), h = document.createElement('h3');
          h.textContent = `stream ${name}`; sec.append(h);
          const div = document.createElement('div'); div.className = 'stream-plot'; sec.append(div); holder.append(sec);
          plots[name] = new StreamPlot(div);
        }
        if (msg.full) plots[name].set(p); else plots[name].append(p);
      }
      if (s.effective_status !== 'running') {
        document.getElementById('finished').hidden = false;
      }
    }
    let first = true;
    es.addEventListener('update', ev => {
      const msg = JSON.parse(ev.data);
      if (first) msg.full = true;
      first = false; conn.textContent = 'live'; apply(msg);
    });
    es.addEventListener('end', ev => { apply(JSON.parse(ev.data)); es.close(); conn.textContent = 'run ended'; });
    es.addEventListener('problem', ev => {
      const d = JSON.parse(ev.data);
      conn.textContent = (d.final ? 'gave up: ' : 'looking again: ') + d.error;
      if (d.final) es.close();
    });
    es.onerror = () => { first = true; if (es.readyState !== EventSource.CLOSED) conn.textContent = 'reconnecting...'; };
  }

  window.HilPlot = HilPlot;
  document.addEventListener('DOMContentLoaded', () => { runPage(); livePage(); });
})();
"""
