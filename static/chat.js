// wschat browser client: one room per URL path, plain text over WebSocket.
(function () {
  'use strict';
  var MAX_BYTES = 64 * 1024;   // server's default max message size (UTF-8 bytes)
  var MAX_LOG = 1000;          // DOM nodes kept in the log
  var ECHO_MS = 5000, ECHO_MAX = 64;
  var RETRY_MIN = 500, RETRY_MAX = 30000;

  function $(id) { return document.getElementById(id); }
  var log = $('log'), form = $('form'), box = $('msg'), stateEl = $('state'), notice = $('notice');
  var enc = new TextEncoder();
  var fromFile = location.protocol === 'file:';
  var url = fromFile ? 'ws://localhost:6969/'
    : (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname;
  var room = fromFile ? '/' : location.pathname;
  try { room = decodeURIComponent(room); } catch (e) { /* keep raw */ }
  room = room.replace(/\/+$/, '') || '/';   // the server treats /lobby/ as /lobby
  $('room').textContent = room;
  document.title = room + ' · wschat';

  var ws = null, attempt = 0, timer = 0, tick = 0, wasOpen = false;
  // Echo suppression. The server relays bytes unchanged, so messages cannot be
  // tagged without changing the wire format. We show our own messages as soon as
  // they are handed to the socket and remember them here (per connection, FIFO,
  // bounded). A received text equal to the oldest remembered one within ECHO_MS
  // is taken as our own echo (--echo mode) and dropped. In non-echo mode entries
  // simply expire. Trade-off: if someone else sends exactly the same text within
  // ECHO_MS of ours, before our echo (or with echo off), theirs is hidden once.
  var sent = [];

  function setState(text, cls) { stateEl.textContent = text; stateEl.className = cls; }
  function say(text) { notice.textContent = text; }

  function nearBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 48; }
  function add(text, kind) {
    var stick = kind === 'own' || nearBottom();
    var li = document.createElement('li');
    li.className = 'm ' + kind;
    if (kind !== 'sys') {
      var d = new Date(), meta = document.createElement('span'), t = document.createElement('time');
      meta.className = 'who';
      meta.textContent = kind === 'own' ? 'You · ' : '';
      t.dateTime = d.toISOString();
      t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
      meta.appendChild(t);
      li.appendChild(meta);
    }
    var body = document.createElement('div');
    body.className = 'body';
    body.textContent = text;   // never innerHTML: data is shown as text
    li.appendChild(body);
    log.appendChild(li);
    while (log.childElementCount > MAX_LOG) log.removeChild(log.firstElementChild);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  var REASONS = { 1000: 'closed', 1001: 'server going away', 1006: 'connection lost',
    1008: 'closed by server (policy, e.g. too slow)', 1009: 'message too large', 1011: 'server error' };

  function connect() {
    clearTimeout(timer); clearInterval(tick);
    if (ws) return;
    setState('connecting…', 'connecting');
    var sock;
    try { sock = new WebSocket(url); } catch (e) { say('Cannot connect: ' + e.message); return retry(); }
    ws = sock; sent = []; wasOpen = false;
    sock.binaryType = 'arraybuffer';
    sock.onopen = function () {
      if (ws !== sock) return;
      // Note: with server history on, a reconnect replays recent messages (shown again).
      attempt = 0; wasOpen = true;
      setState('connected', 'ok');
      add('Connected to ' + room, 'sys');
    };
    sock.onmessage = function (ev) { if (ws === sock) receive(ev.data); };
    sock.onclose = function (ev) {
      if (ws !== sock) return;
      ws = null; sent = [];
      if (wasOpen) add('Disconnected: ' + (REASONS[ev.code] || 'code ' + ev.code) +
        (ev.reason ? ' (' + ev.reason + ')' : ''), 'sys');
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

  function receive(data) {
    if (typeof data !== 'string') {
      add('[binary message, ' + (data.byteLength !== undefined ? data.byteLength : data.size) + ' bytes]', 'other bin');
      return;
    }
    var now = Date.now();
    while (sent.length && now - sent[0].t > ECHO_MS) sent.shift();
    if (sent.length && sent[0].text === data) { sent.shift(); return; }
    add(data, 'other');
  }

  function send() {
    var text = box.value;
    if (!text.trim()) { box.focus(); return; }
    var bytes = enc.encode(text).length;
    if (bytes > MAX_BYTES) {
      say('Not sent: the message is ' + bytes + ' bytes (UTF-8); the limit is ' + MAX_BYTES + ' bytes (64 KiB).');
    } else if (!ws || ws.readyState !== WebSocket.OPEN) {
      say('Not sent: not connected (' + stateEl.textContent + '). Your text is still in the box.');
    } else {
      try {
        ws.send(text);
        sent.push({ text: text, t: Date.now() });
        if (sent.length > ECHO_MAX) sent.shift();
        add(text, 'own');
        box.value = '';
        grow();
        say('');
      } catch (e) { say('Not sent: ' + e.message); }
    }
    box.focus();
  }

  function grow() { box.style.height = 'auto'; box.style.height = Math.min(box.scrollHeight + 2, 160) + 'px'; }

  form.addEventListener('submit', function (e) { e.preventDefault(); send(); });
  box.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  box.addEventListener('input', grow);
  window.addEventListener('online', function () { if (!ws) { attempt = 0; connect(); } });
  window.addEventListener('offline', function () { if (!ws) retry(); });

  if (fromFile) add('Opened from a file: using ' + url, 'sys');
  connect();
  box.focus();
})();
