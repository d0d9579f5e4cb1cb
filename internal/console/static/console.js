// Live updates: one EventSource per page, fed by the console's one watcher.
// Numbers marked data-live are updated in place; a page marked data-reload
// (a replay or a job under way) reloads when something changed.
(function () {
  if (!document.querySelector('meta[name=csrf]') || !window.EventSource) return;
  var es = new EventSource('/events');
  var first = true;
  es.addEventListener('update', function (e) {
    var s = JSON.parse(e.data);
    document.querySelectorAll('[data-live]').forEach(function (el) {
      var v = s[el.getAttribute('data-live')];
      if (v !== undefined) el.textContent = v;
    });
    var live = document.getElementById('live');
    if (live) live.textContent = 'live · updated ' + new Date().toLocaleTimeString();
    if (!first && document.body.getAttribute('data-reload') === '1') location.reload();
    first = false;
  });
})();
