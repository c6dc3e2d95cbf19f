#!/usr/bin/env bash
# Build the dashboard's Plotly: plotly.js's core (scatter) with bar, box, heatmap and parcoords,
# minified into api/dashboard/static/vendor/plotly.min.js (1.3 MB instead of the full bundle's
# 4.8 MB: each page load evaluates a quarter of the code). Needs Node.js and npm; the versions are
# pinned in package.json and package-lock.json. The output is committed, so serving the dashboard
# needs neither.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../api/dashboard/static/vendor/plotly.min.js"
cd "$here"
npm ci --no-audit --no-fund --ignore-scripts
version=$(node -p 'require("plotly.js/package.json").version')
banner="/* plotly.js v$version (MIT license, Copyright Plotly, Inc.): core + bar, box, heatmap, parcoords. Built by scripts/plotly_bundle/build.sh; do not edit. */"
# maplibre's stylesheet (imported by plotly's registry, unused here) goes to a file that is dropped
npx esbuild entry.js --bundle --minify --format=iife --global-name=Plotly --define:global=window \
  --banner:js="$banner" --log-level=warning --outfile="$here/plotly.min.js"
mv "$here/plotly.min.js" "$out"
rm -f "$here/plotly.min.css"
rm -rf node_modules
echo "wrote $out ($(wc -c < "$out") bytes, plotly.js $version)"
