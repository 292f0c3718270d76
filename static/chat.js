// wschat browser client: one room per URL path. Speaks the wschat.v1 subprotocol
// (docs/protocol.md): every message comes with its sequence number, send time and sender;
// a reconnect asks for what followed the last sequence seen, so each message is shown
// exactly once, in order, and what cannot be recovered is shown as "N messages missed".
// What the page sends stays plain text.
(function () {
  'use strict';
  var MAX_LOG = 1000;          // DOM nodes kept in the log
  var RETRY_MIN = 500, RETRY_MAX = 30000, CONFIG_MS = 5000;
  var PROTOCOL = 'wschat.v1';
  var NAME_KEY = 'wschat.name', TAB_KEY = 'wschat.key';
  var MAX_NAME = 32;           // characters, as the server checks
  var NAME_TRIES = 3;          // "name", "name (2)", "name (3)", then a generated name
  // What the server refuses in a name (docs/protocol.md): control and invisible characters.
  var BAD_NAME = /[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]/;
  var ACK_MS = 15000;          // an own message not acked by then was not relayed

  function $(id) { return document.getElementById(id); }
  var log = $('log'), form = $('form'), box = $('msg'), stateEl = $('state'), notice = $('notice');
  var countEl = $('count'), nameBtn = $('name'), nameBar = $('namebar'), nameBox = $('namebox');
  var enc = new TextEncoder(), dec = new TextDecoder();
  var fromFile = location.protocol === 'file:';
  var url = fromFile ? 'ws://localhost:6969/'
    : (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname;
  var room = fromFile ? '/' : location.pathname;
  try { room = decodeURIComponent(room); } catch (e) { /* keep raw */ }
  room = room.replace(/\/+$/, '') || '/';   // the server treats /lobby/ as /lobby
  $('room').textContent = room;
  document.title = room + ' · wschat';

  function stored(area, key) { try { return area.getItem(key); } catch (e) { return null; } }
  function store(area, key, value) { try { area.setItem(key, value); } catch (e) { /* private mode */ } }
  // A secret per tab: reconnecting with it, this tab may take back its name from its own
  // connection the server has not yet noticed is gone.
  var tabKey = stored(sessionStorage, TAB_KEY);
  if (!tabKey || !/^[0-9a-f]{16,64}$/.test(tabKey)) {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    tabKey = Array.prototype.map.call(bytes, function (b) { return (b < 16 ? '0' : '') + b.toString(16); }).join('');
    store(sessionStorage, TAB_KEY, tabKey);
  }
  // The chosen name ('' = none chosen, null = never asked).
  var wanted = stored(localStorage, NAME_KEY);
  if (wanted && wanted.trim() !== wanted) wanted = wanted.trim();
  var nameTry = 0;             // 0: the name itself; n: "name (n+1)" after a refused attempt
  var myName = '';             // what the server calls us (from hello)

  var ws = null, attempt = 0, timer = 0, tick = 0, wasOpen = false, loading = false, reachable = false;
  // Where we are in the room's sequence: the epoch of the last hello and the last sequence
  // shown (or acked). Kept across reconnects, for `since`.
  var epoch = null, lastSeq = 0;
  // On a first visit, the history the server sends has numbers up to the hello's: shown as
  // it comes (each once). Reconnects ask with `since` and get only what follows lastSeq.
  var historyFloor = 0;
  // Messages the server said are gone ("missed" frame): gaps up to this many are not
  // reported a second time when the next message shows them.
  var excused = 0;
  var wasShown = false;        // a hello was shown before: the next one is a reconnect
  var ownSeqs = new Set();     // sequence numbers the server acked for us, this epoch
  var pending = [];            // own messages sent and not yet acked, oldest first
  var DEFAULTS = { maxBytes: 64 * 1024 };
  var server = DEFAULTS;

  function setState(text, cls) { stateEl.textContent = text; stateEl.className = cls; }
  function say(text) { notice.textContent = text; }

  function timeOf(ms) {
    var d = new Date(ms), t = document.createElement('time');
    t.dateTime = d.toISOString();
    t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    return t;
  }
  function nearBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 48; }
  // Adds a log entry: kind 'own', 'other' (with `who` and `ts`) or 'sys'. Returns the node.
  function add(text, kind, who, ts) {
    var stick = kind.indexOf('own') === 0 || nearBottom();
    var li = document.createElement('li');
    li.className = 'm ' + kind;
    if (kind.split(' ')[0] !== 'sys') {
      var meta = document.createElement('span');
      meta.className = 'who';
      meta.textContent = kind.indexOf('own') === 0 ? 'You · ' : (who || 'someone') + ' · ';
      if (ts) meta.appendChild(timeOf(ts));
      else { var s = document.createElement('span'); s.className = 'sending'; s.textContent = 'sending…'; meta.appendChild(s); }
      li.appendChild(meta);
    }
    var body = document.createElement('div');
    body.className = 'body';
    body.textContent = text;   // never innerHTML: data is shown as text
    li.appendChild(body);
    log.appendChild(li);
    trim();
    if (stick) log.scrollTop = log.scrollHeight;
    return li;
  }
  function trim() { while (log.childElementCount > MAX_LOG) log.removeChild(log.firstElementChild); }

  var REASONS = { 1000: 'closed', 1001: 'server going away', 1006: 'connection lost',
    1008: 'closed by server (policy: too slow or too fast)', 1009: 'message too large', 1011: 'server error' };

  // Reads the server's settings, then calls done (always once).
  function loadConfig(done) {
    if (fromFile || !window.fetch) { server = DEFAULTS; reachable = false; return done(); }
    var ctl = window.AbortController ? new AbortController() : null;
    var guard = setTimeout(function () { if (ctl) ctl.abort(); }, CONFIG_MS);
    reachable = false;
    // Relative: resolves against the page's base (the site root), under http or https.
    fetch('config.json', { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); reachable = true; return r.json(); })
      .then(function (c) {
        server = {
          maxBytes: Number.isSafeInteger(c.maxMessageSize) && c.maxMessageSize > 0
            ? c.maxMessageSize : DEFAULTS.maxBytes
        };
      })
      .catch(function () { server = DEFAULTS; })
      .then(function () { clearTimeout(guard); done(); });
  }

  // The name to ask for on this attempt: the chosen one, or "name (n)" after refusals.
  function nameToAsk() {
    if (!wanted || nameTry >= NAME_TRIES) return '';   // give up: the server makes one up
    if (!nameTry) return wanted;
    var suffix = ' (' + (nameTry + 1) + ')';
    return Array.from(wanted).slice(0, MAX_NAME - suffix.length).join('') + suffix;
  }

  function socketUrl() {
    var q = ['key=' + tabKey];
    var n = nameToAsk();
    if (n) q.push('name=' + encodeURIComponent(n));
    if (epoch !== null) q.push('since=' + epoch + ':' + lastSeq);
    return url + '?' + q.join('&');
  }

  function connect() {
    clearTimeout(timer); clearInterval(tick);
    if (ws || loading) return;
    setState('connecting…', 'connecting');
    loading = true;
    loadConfig(function () { loading = false; openSocket(); });
  }

  function openSocket() {
    clearTimeout(timer); clearInterval(tick);
    if (ws) return;
    var sock, asked = nameToAsk();
    try { sock = new WebSocket(socketUrl(), PROTOCOL); } catch (e) { say('Cannot connect: ' + e.message); return retry(); }
    ws = sock; wasOpen = false;
    sock.binaryType = 'arraybuffer';
    sock.onopen = function () {
      if (ws !== sock) return;
      attempt = 0; wasOpen = true;
      setState('connected', 'ok');
    };
    sock.onmessage = function (ev) { if (ws === sock) receive(ev.data); };
    sock.onclose = function (ev) {
      if (ws !== sock) return;
      ws = null;
      countEl.textContent = '';
      if (wasOpen) {
        add('Disconnected: ' + (REASONS[ev.code] || 'code ' + ev.code) + (ev.reason ? ' (' + ev.reason + ')' : ''), 'sys');
      } else if (asked && reachable) {
        // The server answered config.json but refused the socket: most likely the name is
        // in use in this room (409; a browser does not show the status). Try "name (2)", ...
        nameTry++;
        say(nameTry < NAME_TRIES ? 'The name "' + wanted + '" may be in use here; trying "' + nameToAsk() + '".'
          : 'Could not join as "' + wanted + '"; joining under a name the server picks.');
      }
      retry();
    };
  }

  // Exponential backoff with full jitter: wait random(0, min(cap, base * 2^n)).
  function retry() {
    clearTimeout(timer); clearInterval(tick);
    if (navigator.onLine === false) { setState('offline', 'off'); return; }
    var delay = Math.random() * Math.min(RETRY_MAX, RETRY_MIN * Math.pow(2, attempt++));
    var due = Date.now() + delay;
    var show = function () { setState('reconnecting in ' + Math.max(1, Math.ceil((due - Date.now()) / 1000)) + ' s', 'retry'); };
    show();
    tick = setInterval(show, 1000);
    timer = setTimeout(connect, delay);
  }

  function showCount(n) {
    countEl.textContent = Number.isSafeInteger(n) ? n + ' here' : '';
  }
  function showName() {
    nameBtn.textContent = myName || (wanted || 'Choose a name');
  }

  // A message with sequence `seq` is about to be shown: false if it was shown already (or
  // is older); otherwise a gap since the last one is shown as missed.
  function advance(seq) {
    if (!Number.isSafeInteger(seq)) return true;   // not from wschat.v1: show it
    if (seq <= historyFloor) return true;
    if (seq <= lastSeq) return false;
    var gap = seq - lastSeq - 1, told = Math.min(gap, excused);
    excused -= told;
    if (gap > told) missed(gap - told);
    lastSeq = seq;
    return true;
  }
  function missed(n) {
    add(n === null ? 'Some messages may have been missed while disconnected (the server restarted or changed).'
      : n + (n === 1 ? ' message' : ' messages') + ' missed', 'sys missed');
  }

  function onHello(h) {
    myName = typeof h.name === 'string' ? h.name : '';
    showName();
    showCount(h.count);
    historyFloor = 0; excused = 0;
    if (epoch !== h.epoch) {
      // A first visit, or another epoch: sequence numbers start over. The server says
      // "missed" (unknown) itself when we asked with another epoch.
      historyFloor = epoch === null ? h.seq : 0;
      epoch = h.epoch; ownSeqs = new Set(); lastSeq = h.seq;
    }
    if (nameTry && myName) {
      say('You are "' + myName + '" in this room ("' + wanted + '" is in use).');
      nameTry = 0;   // the next reconnect tries the chosen name again
    } else if (notice.textContent.indexOf('The name') === 0) say('');
    add((wasShown ? 'Reconnected to ' : 'Connected to ') + room + ' as ' + myName, 'sys');
    wasShown = true;
    // Own messages sent on a socket that died and not seen in the recovery: not relayed.
    var stale = pending.filter(function (p) { return p.sock !== ws; });
    setTimeout(function () { stale.forEach(function (p) { if (pending.indexOf(p) >= 0) fail(p, 'not delivered (connection lost)'); }); }, 1500);
  }

  function fail(p, why) {
    pending.splice(pending.indexOf(p), 1);
    p.li.classList.add('failed');
    var s = p.li.querySelector('.sending');
    if (s) s.textContent = why;
  }

  // Our own message `p` got sequence `seq` at `ts`: stamp it and move it after what came
  // before it (messages with lower numbers that arrived while it was on its way).
  function confirm(p, seq, ts) {
    pending.splice(pending.indexOf(p), 1);
    ownSeqs.add(seq);
    var s = p.li.querySelector('.sending');
    if (s) s.replaceWith(timeOf(ts));
    p.li.classList.remove('failed');
    var stick = nearBottom();
    log.appendChild(p.li);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function onMsg(seq, ts, from, text, binary) {
    if (!advance(seq)) return;
    if (ownSeqs.has(seq)) { add(text, 'own', null, ts); return; }
    if (from !== null && from === myName) {
      // Ours, relayed just before our socket died (its ack was lost): the pending copy is
      // this one; nothing is shown twice.
      for (var i = 0; i < pending.length; i++) {
        if (pending[i].sock !== ws && pending[i].text === text) { confirm(pending[i], seq, ts); return; }
      }
    }
    add(text, 'other' + (binary ? ' bin' : ''), from === null ? 'another server' : from, ts);
  }

  function onPresence(p) {
    showCount(p.count);
    var joined = (p.joined || []).filter(function (n) { return n !== myName; });
    var left = (p.left || []).filter(function (n) { return n !== myName; });
    var parts = [];
    if (joined.length) parts.push(joined.join(', ') + ' joined');
    if (left.length) parts.push(left.join(', ') + ' left');
    if (p.more) parts.push(p.more + ' more came or went');
    if (parts.length) add(parts.join('; '), 'sys presence');
  }

  function receive(data) {
    if (typeof data !== 'string') {
      // 0x01, seq (8), ts (8), name length (1), name, payload.
      var v = new DataView(data);
      if (data.byteLength >= 18 && v.getUint8(0) === 1) {
        var seq = Number(v.getBigUint64(1)), ts = Number(v.getBigUint64(9)), n = v.getUint8(17);
        var from = n ? dec.decode(new Uint8Array(data, 18, n)) : null;
        return onMsg(seq, ts, from, '[binary message, ' + (data.byteLength - 18 - n) + ' bytes]', true);
      }
      return add('[binary message, ' + data.byteLength + ' bytes]', 'other bin');
    }
    // A room message: 'm' SEQ ' ' TS ' ' FROM '\n' TEXT. FROM is '@' and a name, '#' and the
    // id of a member without one (shown as guest-ID), or empty (another server).
    if (data.charAt(0) === 'm') {
      var nl = data.indexOf('\n'), s1 = data.indexOf(' '), s2 = data.indexOf(' ', s1 + 1);
      if (nl < 0 || s1 < 0 || s2 < 0 || s2 > nl) return add(data, 'other');
      var f = data.slice(s2 + 1, nl);
      var who = f.charAt(0) === '@' ? f.slice(1) : f.charAt(0) === '#' ? 'guest-' + f.slice(1) : null;
      return onMsg(Number(data.slice(1, s1)), Number(data.slice(s1 + 1, s2)), who, data.slice(nl + 1), false);
    }
    var m;
    try { m = JSON.parse(data); } catch (e) { m = null; }
    if (!m || typeof m !== 'object') return add(data, 'other');
    switch (m.t) {
      case 'hello': return onHello(m);
      case 'ack':
        if (!advance(m.seq)) return;
        var p = pending.filter(function (q) { return q.sock === ws; })[0];
        if (p) confirm(p, m.seq, m.ts); else ownSeqs.add(m.seq);
        return;
      case 'missed':
        if (Number.isSafeInteger(m.count)) excused += m.count;
        return missed(Number.isSafeInteger(m.count) ? m.count : null);
      case 'presence': return onPresence(m);
      default: return;   // a newer server's frame type: ignored
    }
  }

  function send() {
    var text = box.value;
    if (!text.trim()) { box.focus(); return; }
    var bytes = enc.encode(text).length;
    if (bytes > server.maxBytes) {
      say('Not sent: the message is ' + bytes + ' bytes (UTF-8); the limit is ' + size(server.maxBytes) + '.');
    } else if (!ws || ws.readyState !== WebSocket.OPEN) {
      say('Not sent: not connected (' + stateEl.textContent + '). Your text is still in the box.');
    } else {
      try {
        ws.send(text);
        var p = { text: text, sock: ws, li: add(text, 'own') };
        pending.push(p);
        // Dropped by the server's rate limit: no ack ever comes.
        setTimeout(function () { if (pending.indexOf(p) >= 0 && p.sock === ws) fail(p, 'not delivered (too fast?)'); }, ACK_MS);
        box.value = '';
        grow();
        say('');
      } catch (e) { say('Not sent: ' + e.message); }
    }
    box.focus();
  }

  // 65536 -> "65536 bytes (64 KiB)"; 3000 -> "3000 bytes".
  function size(n) {
    var unit = n % 1048576 === 0 ? n / 1048576 + ' MiB' : n % 1024 === 0 ? n / 1024 + ' KiB' : '';
    return n + ' bytes' + (unit ? ' (' + unit + ')' : '');
  }

  function grow() { box.style.height = 'auto'; box.style.height = Math.min(box.scrollHeight + 2, 160) + 'px'; }

  // Names: asked once (the bar shows until a name is saved or skipped), changeable from the
  // header. A change reconnects with `since`, so nothing is lost or shown twice.
  function openNameBar() { nameBar.hidden = false; nameBox.value = wanted || ''; nameBox.focus(); }
  function nameProblem(n) {
    if (Array.from(n).length > MAX_NAME || enc.encode(n).length > 96) return 'at most ' + MAX_NAME + ' characters';
    if (BAD_NAME.test(n)) return 'no control or invisible characters';
    if (/^guest-/i.test(n)) return 'names starting with guest- are given by the server';
    return '';
  }
  function setName(n) {
    n = (n || '').trim();
    var problem = n && nameProblem(n);
    if (problem) { say('Not saved: ' + problem + '.'); nameBox.focus(); return false; }
    nameBar.hidden = true;
    var changed = n !== (wanted || '');
    wanted = n; store(localStorage, NAME_KEY, n); nameTry = 0;
    showName();
    if (changed && ws) ws.close(1000, 'name change');   // onclose reconnects
    return true;
  }
  nameBtn.addEventListener('click', openNameBar);
  $('nameform').addEventListener('submit', function (e) { e.preventDefault(); if (setName(nameBox.value)) box.focus(); });
  $('nameskip').addEventListener('click', function () { if (wanted === null) setName(''); else nameBar.hidden = true; box.focus(); });
  nameBox.maxLength = MAX_NAME;

  form.addEventListener('submit', function (e) { e.preventDefault(); send(); });
  box.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  box.addEventListener('input', grow);
  window.addEventListener('online', function () { if (!ws) { attempt = 0; connect(); } });
  window.addEventListener('offline', function () { if (!ws) retry(); });

  if (wanted && nameProblem(wanted)) wanted = null;   // edited by hand, or an older rule
  showName();
  if (wanted === null) nameBar.hidden = false;
  if (fromFile) add('Opened from a file: using ' + url, 'sys');
  connect();
  box.focus();
})();
