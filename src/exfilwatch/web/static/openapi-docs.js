// Starts Swagger UI on /docs from the vendored bundle: a file, not an inline script, so the
// console's Content-Security-Policy (script-src 'self') holds on this page too.
"use strict";
(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
  });
})();
