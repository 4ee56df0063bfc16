// The console's only script: render the Vega-Lite charts, confirm dangerous actions.
// No inline scripts anywhere (the CSP forbids them); chart specs are JSON in data attributes,
// and Vega evaluates expressions with its interpreter instead of `new Function` (no 'unsafe-eval').
import { expressionInterpreter } from "./vendor/vega-interpreter/vega-interpreter.js";

function renderCharts(root) {
  for (const el of root.querySelectorAll("[data-vega-spec]")) {
    if (el.dataset.rendered) continue;
    el.dataset.rendered = "1";
    const spec = JSON.parse(el.dataset.vegaSpec);
    window.vegaEmbed(el, spec, { renderer: "svg", actions: false, ast: true, expr: expressionInterpreter,
                                  defaultStyle: false })
      .then(() => { el.dataset.chartReady = "1"; })
      .catch((err) => { el.dataset.chartError = String(err); el.textContent = "chart failed: " + err; });
  }
}

// A module runs after the document is parsed; HTMX swaps bring new charts later.
renderCharts(document);
document.addEventListener("htmx:afterSwap", (e) => renderCharts(e.target));
