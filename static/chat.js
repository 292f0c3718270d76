// wschat browser client: one room per URL path, plain text over WebSocket.
(function () {
  'use strict';
  var MAX_LOG = 1000;          // DOM nodes kept in the log
  var ECHO_MS = 10000, ECHO_MAX = 64;
  var RETRY_MIN = 500, RETRY_MAX = 30000, CONFIG_MS = 5000;

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

  var ws = null, attempt = 0, timer = 0, tick = 0, wasOpen = false, loading = false;
  // What the server says about itself (GET config.json, fetched before each
  // connection, so a server restarted with other flags is seen). Until then, or if
  // it cannot be had (opened from a file, an older server), the safe defaults:
  // no echo (so nothing received is ever hidden) and the server's default limit.
  var DEFAULTS = { echo: false, maxBytes: 64 * 1024 };
  var server = DEFAULTS;
  // Echoes awaited (--echo only). The server relays bytes unchanged, so a message
  // cannot be tagged as ours; but it sends a connection's messages back in the
  // order they were sent. We show our own message as soon as it is handed to the
  // socket and queue its text here (per connection, FIFO, bounded); the next
  // received text equal to the oldest entry is its echo and is dropped. Without
  // echo nothing is queued, so a peer's text is always shown, even one equal to
  // ours. An echo can be lost (dropped over --max-rate, or from our queue by a
  // drop-* slow-client policy): an entry older than ECHO_MS is given up, so one
  // lost echo does not block the queue. If a peer sends the same text while ours
  // is on its way, one of the two is shown as ours and the other as theirs:
  // indistinguishable, and both are shown.
  var awaited = [];

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

  // Reads the server's settings, then calls done (always once). Fields that are
  // missing or of the wrong type keep their defaults.
  function loadConfig(done) {
    if (fromFile || !window.fetch) { server = DEFAULTS; return done(); }
    var ctl = window.AbortController ? new AbortController() : null;
    var guard = setTimeout(function () { if (ctl) ctl.abort(); }, CONFIG_MS);
    // Relative: resolves against the page's base (the site root), under http or https.
    fetch('config.json', { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then(function (c) {
        server = {
          echo: typeof c.echo === 'boolean' ? c.echo : DEFAULTS.echo,
          maxBytes: Number.isSafeInteger(c.maxMessageSize) && c.maxMessageSize > 0
            ? c.maxMessageSize : DEFAULTS.maxBytes
        };
      })
      .catch(function () { server = DEFAULTS; })   // also a null body or a throw above
      .then(function () { clearTimeout(guard); done(); });
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
    var sock;
    try { sock = new WebSocket(url); } catch (e) { say('Cannot connect: ' + e.message); return retry(); }
    ws = sock; awaited = []; wasOpen = false;
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
      ws = null; awaited = [];
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
    while (awaited.length && now - awaited[0].t > ECHO_MS) awaited.shift();
    if (awaited.length && awaited[0].text === data) { awaited.shift(); return; }
    add(data, 'other');
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
        if (server.echo) {
          awaited.push({ text: text, t: Date.now() });
          if (awaited.length > ECHO_MAX) awaited.shift();
        }
        add(text, 'own');
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
