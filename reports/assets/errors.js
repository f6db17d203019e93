// Loaded before plotly.js: every error on the page, including one while plotly.js loads, is kept in
// document.body.dataset.jsErrors (a JSON list) for the headless-browser test and for anyone debugging.
(function(){
  var errs = [];
  window.__reportError = function(msg){
    errs.push(String(msg));
    document.body.dataset.jsErrors = JSON.stringify(errs);
  };
  window.onerror = function(msg, src, line){
    window.__reportError(msg + (line ? " (line " + line + ")" : ""));
  };
  window.addEventListener("unhandledrejection", function(e){
    var r = e.reason; window.__reportError("unhandled rejection: " + (r && r.message ? r.message : r));
  });
})();
