#!/bin/sh
# Refresh the console's vendored JavaScript (src/exfilwatch/web/static/vendor/) from npm.
# Versions are pinned here; bump them, run this script, and update VENDORED.md's table.
set -eu
HTMX=2.0.11 VEGA=6.4.0 VEGA_LITE=6.5.0 VEGA_EMBED=7.3.0 VEGA_INTERPRETER=2.3.2
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/exfilwatch/web/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fetch() {  # package version file-in-package
  (cd "$WORK" && npm pack --silent "$1@$2" >/dev/null && mkdir -p "$1" && tar xzf "$1-$2.tgz" -C "$1")
  mkdir -p "$DEST/$1"
  cp "$WORK/$1/package/$3" "$DEST/$1/"
  cp "$WORK/$1/package/LICENSE" "$DEST/$1/LICENSE"
}
fetch htmx.org "$HTMX" dist/htmx.min.js
fetch vega "$VEGA" build/vega.min.js
fetch vega-lite "$VEGA_LITE" build/vega-lite.min.js
fetch vega-embed "$VEGA_EMBED" build/vega-embed.min.js
fetch vega-interpreter "$VEGA_INTERPRETER" build/vega-interpreter.js
# vega-interpreter ships as an ES module importing the bare name 'vega-util', which a browser
# cannot resolve without an import map (an inline script, which the console's CSP forbids):
# point it at the shim that re-exports those names from the vega bundle.
sed -i "s#from 'vega-util';#from '../../vega-util-shim.js';#" "$DEST/vega-interpreter/vega-interpreter.js"
