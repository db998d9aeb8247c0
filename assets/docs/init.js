// Portcullis: Swagger UI over this gateway's OpenAPI document, which is served
// beside this script ({base}/openapi.json). Nothing is loaded from another
// host: the page's Content-Security-Policy says so too.
(function () {
  var base = document.currentScript.src.replace(/\/init\.js(\?.*)?$/, "");
  window.ui = SwaggerUIBundle({
    url: base + "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Swagger UI would show a badge from validator.swagger.io: never.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
})();
