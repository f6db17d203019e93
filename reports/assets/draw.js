// Draws every div.chart from the JSON in its sibling <script id="<div id>-data">, then records in
// document.body.dataset.chartsDrawn how many charts have an svg.main-svg.
(function(){
  var config = JSON.parse(document.getElementById("plotly-config").textContent);
  function draw(){
    var divs = document.querySelectorAll("div.chart");
    var drawn = 0;
    document.body.dataset.chartsExpected = String(divs.length);
    document.body.dataset.chartsDrawn = "0";
    if (typeof Plotly === "undefined") { window.__reportError("plotly.js did not load"); return; }
    divs.forEach(function(div){
      try {
        var spec = JSON.parse(document.getElementById(div.id + "-data").textContent);
        Plotly.newPlot(div, spec.data, spec.layout, config).then(function(){
          if (div.querySelector("svg.main-svg")) {
            drawn += 1;
            document.body.dataset.chartsDrawn = String(drawn);
          } else {
            window.__reportError(div.id + ": drew no svg");
          }
        }, function(err){ window.__reportError(div.id + ": " + err); });
      } catch (err) { window.__reportError(div.id + ": " + err); }
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
