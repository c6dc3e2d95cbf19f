// The trace types the dashboard draws (api/dashboard/static/dashboard.js); scatter is in the core.
// A new trace type there is a line here and a rebuild (build.sh).
var Plotly = require("plotly.js/lib/core");

Plotly.register([
  require("plotly.js/lib/bar"),
  require("plotly.js/lib/box"),
  require("plotly.js/lib/heatmap"),
  require("plotly.js/lib/parcoords"),
]);

module.exports = Plotly;
