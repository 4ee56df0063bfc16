#!/bin/sh
# Refresh the console's vendored JavaScript (src/exfilwatch/web/static/vendor/) from npm.
# Versions are pinned here; bump them, run this script, and update VENDORED.md's table.
set -eu
HTMX=2.0.11 VEGA=6.4.0 VEGA_LITE=6.5.0 VEGA_EMBED=7.3.0 VEGA_INTERPRETER=2.3.2 SWAGGER_UI=5.35.0
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/exfilwatch/web/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fetch() {  # package version file-in-package...
  package=$1 version=$2
  shift 2
  (cd "$WORK" && npm pack --silent "$package@$version" >/dev/null && mkdir -p "$package" && tar xzf "$package-$version.tgz" -C "$package")
  mkdir -p "$DEST/$package"
  for file in "$@" LICENSE; do
    cp "$WORK/$package/package/$file" "$DEST/$package/"
  done
}
fetch htmx.org "$HTMX" dist/htmx.min.js
fetch vega "$VEGA" build/vega.min.js
fetch vega-lite "$VEGA_LITE" build/vega-lite.min.js
fetch vega-embed "$VEGA_EMBED" build/vega-embed.min.js
fetch vega-interpreter "$VEGA_INTERPRETER" build/vega-interpreter.js
# the OpenAPI page at /docs (FastAPI's default loads these from a CDN, with an inline bootstrap)
fetch swagger-ui-dist "$SWAGGER_UI" swagger-ui-bundle.js swagger-ui.css NOTICE
# vega-interpreter ships as an ES module importing the bare name 'vega-util', which a browser
# cannot resolve without an import map (an inline script, which the console's CSP forbids):
# point it at the shim that re-exports those names from the vega bundle.
sed -i "s#from 'vega-util';#from '../../vega-util-shim.js';#" "$DEST/vega-interpreter/vega-interpreter.js"
