// The control room's live breach board. Everything comes from this node: the board over a
// server-sent event stream, each breach's map as SVG, acknowledgements as JSON. A stream that
// falls silent for LOST_AFTER_MS shows "connection lost" with the time of the last update, so a
// frozen page never looks like a quiet night.
'use strict';

const LOST_AFTER_MS = 6000;
const csrf = document.querySelector('meta[name="hru-csrf"]').content;
const page = {
  lastMessage: 0,
  lastUpdate: 0,
  rendered: false,
  selected: null,
  selectedSeen: null,
  pinned: false,
  rows: new Map(),
  source: null,
  ended: false,
  lost: false,
};
// When each breach's row and map marker first appeared (ms since the epoch, this browser's clock).
window.hruShown = {};
window.hruMarkerShown = {};

const $ = (id) => document.getElementById(id);

function clock(ms) {
  return ms ? new Date(ms).toISOString().substring(11, 19) + ' UTC' : 'never';
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function kindLabel(kind) {
  return kind.replace('BREACH_KIND_', '').replaceAll('_', ' ').toLowerCase();
}

function stateLabel(state) {
  return state.replace('BREACH_STATE_', '').toLowerCase();
}

function show(id, text) {
  const e = $(id);
  e.textContent = text;
  e.hidden = !text;
}

// Say the connection is lost (keeping the last reason given when none is).
function lost(reason) {
  page.lost = true;
  if (reason !== undefined) page.lostReason = reason;
  document.body.classList.add('disconnected');
  const ago = page.lastUpdate ? ' (' + duration(Date.now() - page.lastUpdate) + ' ago)' : '';
  show('connection', 'Connection to the node lost' + (page.lostReason ? ': ' + page.lostReason : '') +
    ' — reconnecting. Last update ' + clock(page.lastUpdate) + ago + '. What you see may be out of date.');
}

function alive() {
  page.lastMessage = Date.now();
  page.lastUpdate = page.lastMessage;
  $('last-update').textContent = clock(page.lastUpdate);
  if (page.lost) {
    page.lost = false;
    page.lostReason = '';
    document.body.classList.remove('disconnected');
    show('connection', '');
  }
}

function end(text) {
  page.ended = true;
  if (page.source) page.source.close();
  document.body.classList.add('disconnected');
  const banner = $('connection');
  banner.textContent = text + ' ';
  const a = document.createElement('a');
  a.href = '/login';
  a.id = 'sign-in-again';
  a.textContent = 'Sign in';
  banner.appendChild(a);
  banner.hidden = false;
}

function connect() {
  if (page.ended) return;
  if (page.source) page.source.close();
  page.lastMessage = Date.now();
  const source = new EventSource('/live');
  page.source = source;
  source.addEventListener('board', (e) => {
    try {
      render(JSON.parse(e.data));
      alive();
    } catch (err) {
      lost('the page could not show an update (' + err + ')');
    }
  });
  source.addEventListener('beat', (e) => {
    alive();
    const beat = JSON.parse(e.data);
    show('stale', beat.stale_s
      ? 'The node has not read the log for ' + duration(beat.stale_s * 1000) + ': new breaches may not be shown.'
      : '');
  });
  source.addEventListener('expired', () => end('Your session has ended.'));
  source.addEventListener('failed', (e) => lost('the node could not record this view (' + e.data + ')'));
  source.onerror = () => {
    // An older stream's error must not close its newer replacement.
    if (page.ended || page.source !== source) return;
    lost('');
    if (source.readyState === EventSource.CLOSED) {
      // Refused rather than cut: find out whether the session is still good.
      fetch('/session', { cache: 'no-store' })
        .then((r) => {
          if (r.status === 401) end('You are signed out.');
          else setTimeout(connect, 1000);
        })
        .catch(() => setTimeout(connect, 1000));
    }
  };
}

// A stream that says nothing is a stream that is gone (the node may be frozen or cut off).
setInterval(() => {
  if (page.ended) return;
  if (Date.now() - page.lastMessage > LOST_AFTER_MS) {
    lost();
    connect();
  }
  for (const [, row] of page.rows) {
    row.cells.open.textContent = duration(Date.now() - row.data.opened_at_ms);
  }
  if (page.lost) lost();
}, 1000);

function coverageText(cover) {
  if (!cover) return 'not fitted';
  const since = cover.watch === 'MONITORED' ? '' : ' since ' + clock(cover.since_ms);
  return cover.watch.toLowerCase() + since;
}

function alarm(row) {
  page.alarmFor = row.breach_id;
  show('alarm', 'New breach: ' + kindLabel(row.kind) + ', tag ' + row.tag_id + ', opened ' + clock(row.opened_at_ms));
  try {
    page.audio = page.audio || new AudioContext();
    const audio = page.audio;
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.4);
  } catch (e) {
    // No sound allowed before the operator has interacted with the page: the banner stays.
  }
}

function makeRow(data) {
  const tr = document.createElement('tr');
  tr.className = 'breach';
  tr.dataset.breach = data.breach_id;
  const cells = {};
  for (const name of ['kind', 'state', 'open', 'distance', 'late', 'tag', 'case', 'coverage', 'ack']) {
    const td = document.createElement('td');
    td.className = name;
    tr.appendChild(td);
    cells[name] = td;
  }
  tr.addEventListener('click', (e) => {
    if (e.target.closest('td.ack')) return;
    page.pinned = true;
    select(data.breach_id);
  });
  return { tr, cells, data };
}

function fillAck(row) {
  const td = row.cells.ack;
  const d = row.data;
  if (d.acknowledged_by) {
    td.textContent = 'by ' + d.acknowledged_by + ': ' + (d.action || '') +
      (d.response_time_ms != null ? ' (' + duration(d.response_time_ms) + ')' : '');
    return;
  }
  if (td.querySelector('input')) return; // keep what the operator is typing
  td.textContent = '';
  const input = document.createElement('input');
  input.placeholder = 'action taken';
  input.className = 'action';
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'acknowledge';
  button.textContent = 'Acknowledge';
  button.addEventListener('click', () => {
    window.hruAcknowledge(d.breach_id, input.value).then((r) => {
      if (r.ok) input.value = '';
    });
  });
  td.append(input, button);
}

function render(message) {
  const board = message.board;
  const covers = new Map(board.coverage.map((c) => [c.tag_id, c]));
  const body = $('breaches').tBodies[0];
  const seen = new Set();
  let newest = null;
  board.breaches.forEach((d, i) => {
    seen.add(d.breach_id);
    let row = page.rows.get(d.breach_id);
    if (!row) {
      row = makeRow(d);
      page.rows.set(d.breach_id, row);
      window.hruShown[d.breach_id] = Date.now();
      if (page.rendered) {
        row.tr.classList.add('new');
        if (!newest) newest = d;
      }
    }
    row.data = d;
    const c = row.cells;
    c.kind.textContent = kindLabel(d.kind);
    c.state.textContent = stateLabel(d.state);
    c.open.textContent = duration(Date.now() - d.opened_at_ms);
    c.distance.textContent = d.position || d.distance_m ? Math.round(d.distance_m) + ' m' : '—';
    c.late.textContent = d.late ? 'late' : '';
    c.tag.textContent = d.tag_id;
    c.case.textContent = '…' + d.case_id.slice(-8);
    c.case.title = d.case_id;
    const cover = covers.get(d.tag_id);
    c.coverage.textContent = coverageText(cover);
    c.coverage.className = 'coverage' + (cover ? ' watch-' + cover.watch : '');
    row.tr.classList.toggle('unacknowledged', !d.acknowledged_by);
    fillAck(row);
    if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
  });
  for (const [id, row] of page.rows) {
    if (!seen.has(id)) {
      row.tr.remove();
      page.rows.delete(id);
    }
  }
  $('count').textContent = '(' + board.breaches.length + (board.more ? ' + ' + board.more + ' older' : '') + ')';
  $('empty').hidden = board.breaches.length > 0;
  renderCoverage(board.coverage);
  const g = board.geofence;
  show('geofence', g && g.silent
    ? 'The geofence is silent (last heartbeat ' + clock(g.last_heartbeat_ms) + '): breaches may go unseen.'
    : '');
  if (newest) alarm(newest);
  // The alarm stays until its breach is acknowledged (or leaves the board).
  const alarmed = page.rows.get(page.alarmFor);
  if (page.alarmFor && (!alarmed || alarmed.data.acknowledged_by)) {
    page.alarmFor = null;
    show('alarm', '');
  }
  page.rendered = true;
  // Follow the newest breach needing attention unless the operator chose one.
  const first = board.breaches.find((d) => !d.acknowledged_by) || board.breaches[0];
  if (!page.pinned || !page.rows.has(page.selected)) {
    page.pinned = page.pinned && page.rows.has(page.selected);
    if (first) select(first.breach_id);
  } else {
    const row = page.rows.get(page.selected);
    if (row && row.data.observed_at_ms !== page.selectedSeen) select(page.selected);
  }
}

function renderCoverage(coverage) {
  const body = $('coverage').tBodies[0];
  body.textContent = '';
  for (const c of coverage) {
    const tr = document.createElement('tr');
    tr.dataset.tag = c.tag_id;
    const cells = [c.tag_id, '…' + c.case_id.slice(-8), c.watch.toLowerCase(),
      c.watch === 'MONITORED' ? '' : clock(c.since_ms),
      c.conditions.map((k) => kindLabel(k[0])).join(', ')];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 2) td.className = 'watch-' + c.watch;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

// The selected breach's map: fetched when the selection changes, and again as its fixes come
// in at most every MAP_REFRESH_MS (each fetch is an access record in the operator's name).
const MAP_REFRESH_MS = 10000;
function select(id) {
  const row = page.rows.get(id);
  for (const [, r] of page.rows) r.tr.classList.toggle('selected', r.data.breach_id === id);
  if (!row) return;
  if (page.selected === id && page.selectedSeen === row.data.observed_at_ms) return;
  clearTimeout(page.mapTimer);
  if (page.selected === id && Date.now() - page.mapFetched < MAP_REFRESH_MS) {
    // Refreshed later, if it is still the one selected then.
    page.mapTimer = setTimeout(() => {
      if (page.selected === id) select(id);
    }, MAP_REFRESH_MS - (Date.now() - page.mapFetched));
    return;
  }
  page.selected = id;
  page.selectedSeen = row.data.observed_at_ms;
  page.mapFetched = Date.now();
  const ticket = (page.mapTicket = (page.mapTicket || 0) + 1);
  $('map-title').textContent = kindLabel(row.data.kind) + ' · ' + row.data.tag_id;
  fetch('/map/' + id, { cache: 'no-store' })
    .then((r) => (r.ok ? r.text() : Promise.reject(new Error('map: HTTP ' + r.status))))
    .then((text) => {
      // Only the answer to the latest request is drawn (answers may come out of order).
      if (page.selected !== id || ticket !== page.mapTicket) return;
      const svg = new DOMParser().parseFromString(text, 'image/svg+xml').documentElement;
      const map = $('map');
      map.textContent = '';
      map.appendChild(document.importNode(svg, true));
      if (map.querySelector('#breach-marker') && !window.hruMarkerShown[id]) {
        window.hruMarkerShown[id] = Date.now();
      }
    })
    .catch((e) => show('message', String(e.message || e)));
}

// Acknowledge breach `id` with `action`: {ok, status, body}; a refusal is shown on the page.
window.hruAcknowledge = function (id, action) {
  return fetch('/acknowledge', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-hru-csrf': csrf },
    body: JSON.stringify({ breach_id: id, action: action }),
  }).then((r) => r.json().catch(() => ({ error: 'HTTP ' + r.status })).then((body) => {
    if (r.ok) {
      show('message', 'Acknowledged: ' + action);
      $('message').className = 'banner';
    } else {
      show('message', 'Not acknowledged: ' + body.error);
      $('message').className = 'banner error';
      if (r.status === 401) end('You are signed out.');
    }
    return { ok: r.ok, status: r.status, body: body };
  }));
};

$('sign-out').addEventListener('click', () => {
  page.ended = true;
  if (page.source) page.source.close();
  fetch('/logout', { method: 'POST', headers: { 'x-hru-csrf': csrf } })
    .then((r) => r.json())
    .then((body) => window.location.assign(body.next || '/signed-out'))
    .catch(() => window.location.assign('/signed-out'));
});

connect();
