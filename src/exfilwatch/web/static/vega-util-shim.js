// The names vega-interpreter imports from vega-util, taken from the vega bundle (see VENDORED.md).
const v = window.vega;
export const ascending = v.ascending;
export const isString = v.isString;
export const DisallowedObjectProperties = v.DisallowedObjectProperties;
