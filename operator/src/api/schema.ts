// A small schema builder: every builder returns the OpenAPI v3 (structural) schema the API server
// enforces *and* carries the TypeScript type of the value, so the CRD YAML and the static types
// are one definition (`Infer<typeof X>`), never two copies that drift.

export interface CelRule {
  rule: string;
  message: string;
  /** CEL string expression for the message (e.g. to quote the offending values); `message` is the fallback. */
  messageExpression?: string;
  /** JSON path of the field the error is reported against (shown in the apiserver message). */
  fieldPath?: string;
  reason?: "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired" | "FieldValueDuplicate";
}

/** The subset of JSONSchemaProps (apiextensions.k8s.io/v1) the Kiln CRDs use. */
export interface JsonSchema {
  type?: "object" | "array" | "string" | "integer" | "number" | "boolean";
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  additionalProperties?: JsonSchema;
  enum?: (string | number)[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  pattern?: string;
  format?: string;
  nullable?: boolean;
  "x-kubernetes-int-or-string"?: true;
  "x-kubernetes-preserve-unknown-fields"?: true;
  "x-kubernetes-list-type"?: "atomic" | "set" | "map";
  "x-kubernetes-list-map-keys"?: string[];
  "x-kubernetes-map-type"?: "atomic" | "granular";
  "x-kubernetes-validations"?: CelRule[];
}

/** A schema whose validated value has TypeScript type T. `optional` marks an omittable property. */
export interface Schema<T, Optional extends boolean = boolean> {
  readonly json: JsonSchema;
  readonly optional: Optional;
  /** Phantom: never set at runtime, only carries T for `Infer`. */
  readonly __type?: T;
}

export type Infer<S> = S extends Schema<infer T, boolean> ? T : never;

interface Common {
  description?: string;
  validations?: CelRule[];
}

function make<T>(json: JsonSchema, opts: Common): Schema<T, false> {
  const out: JsonSchema = { ...json };
  if (opts.description !== undefined) out.description = opts.description;
  if (opts.validations?.length) out["x-kubernetes-validations"] = opts.validations;
  return { json: reorder(out), optional: false };
}

// Keys in a fixed order so the generated YAML reads top-down (type, description, then constraints).
const KEY_ORDER: (keyof JsonSchema)[] = [
  "type",
  "description",
  "format",
  "enum",
  "default",
  "minimum",
  "maximum",
  "minLength",
  "maxLength",
  "pattern",
  "minItems",
  "maxItems",
  "nullable",
  "x-kubernetes-int-or-string",
  "x-kubernetes-preserve-unknown-fields",
  "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys",
  "x-kubernetes-map-type",
  "required",
  "properties",
  "items",
  "additionalProperties",
  "x-kubernetes-validations",
];

function reorder(json: JsonSchema): JsonSchema {
  const out: Record<string, unknown> = {};
  for (const key of KEY_ORDER) {
    if (json[key] !== undefined) out[key] = json[key];
  }
  return out as JsonSchema;
}

export function string(
  opts: Common & {
    default?: string;
    pattern?: string;
    minLength?: number;
    maxLength?: number;
    format?: string;
  } = {},
): Schema<string, false> {
  const { description, validations, ...rest } = opts;
  return make<string>({ type: "string", ...rest }, { description, validations });
}

export function enumOf<const V extends readonly string[]>(
  values: V,
  opts: Common & { default?: V[number] } = {},
): Schema<V[number], false> {
  const { description, validations, ...rest } = opts;
  return make<V[number]>({ type: "string", enum: [...values], ...rest }, { description, validations });
}

export function integer(
  opts: Common & { default?: number; minimum?: number; maximum?: number; format?: "int32" | "int64" } = {},
): Schema<number, false> {
  const { description, validations, ...rest } = opts;
  return make<number>({ type: "integer", ...rest }, { description, validations });
}

export function number(
  opts: Common & { default?: number; minimum?: number; maximum?: number } = {},
): Schema<number, false> {
  const { description, validations, ...rest } = opts;
  return make<number>({ type: "number", ...rest }, { description, validations });
}

export function boolean(opts: Common & { default?: boolean } = {}): Schema<boolean, false> {
  const { description, validations, ...rest } = opts;
  return make<boolean>({ type: "boolean", ...rest }, { description, validations });
}

export function intOrString(
  opts: Common & { default?: number | string } = {},
): Schema<number | string, false> {
  const { description, validations, ...rest } = opts;
  return make<number | string>({ "x-kubernetes-int-or-string": true, ...rest }, { description, validations });
}

export function dateTime(opts: Common = {}): Schema<string, false> {
  return make<string>({ type: "string", format: "date-time" }, opts);
}

export function array<T>(
  items: Schema<T>,
  opts: Common & {
    minItems?: number;
    maxItems?: number;
    default?: T[];
    listType?: "atomic" | "set" | "map";
    listMapKeys?: string[];
  } = {},
): Schema<T[], false> {
  const { description, validations, listType, listMapKeys, ...rest } = opts;
  const json: JsonSchema = { type: "array", items: items.json, ...rest };
  if (listType) json["x-kubernetes-list-type"] = listType;
  if (listMapKeys) json["x-kubernetes-list-map-keys"] = listMapKeys;
  return make<T[]>(json, { description, validations });
}

export function record<T>(values: Schema<T>, opts: Common = {}): Schema<Record<string, T>, false> {
  return make<Record<string, T>>({ type: "object", additionalProperties: values.json }, opts);
}

/** An object whose content the operator passes through untouched (e.g. core/v1 Toleration). */
export function opaque<T>(opts: Common = {}): Schema<T, false> {
  return make<T>({ type: "object", "x-kubernetes-preserve-unknown-fields": true }, opts);
}

type Shape = Record<string, Schema<unknown>>;
type OptionalKeys<S extends Shape> = {
  [K in keyof S]: S[K] extends Schema<unknown, true> ? K : never;
}[keyof S];
type RequiredKeys<S extends Shape> = Exclude<keyof S, OptionalKeys<S>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
export type ObjectOf<S extends Shape> = Simplify<
  { [K in RequiredKeys<S>]: Infer<S[K]> } & { [K in OptionalKeys<S>]?: Infer<S[K]> }
>;

export function object<S extends Shape>(
  shape: S,
  opts: Common & { default?: Record<string, unknown> } = {},
): Schema<ObjectOf<S>, false> {
  const properties: Record<string, JsonSchema> = {};
  const required: string[] = [];
  for (const [name, schema] of Object.entries(shape)) {
    properties[name] = schema.json;
    if (!schema.optional) required.push(name);
  }
  const json: JsonSchema = { type: "object", properties };
  if (required.length) json.required = required;
  if (opts.default !== undefined) json.default = opts.default;
  return make<ObjectOf<S>>(json, opts);
}

/**
 * The property may be omitted. A property with a schema `default` should still be marked optional
 * in *spec* types: the API server fills it in, but the user (and a unit test) may leave it out;
 * `applyDefaults` fills it the same way the API server does.
 */
export function optional<T>(schema: Schema<T>): Schema<T, true> {
  return { json: schema.json, optional: true };
}

/**
 * Fill schema defaults into a value the way the API server's structural defaulting does: a missing
 * property with a `default` gets it, then defaulting recurses into objects and array items.
 */
export function applyDefaults<T>(schema: Schema<T>, value: unknown): T {
  return defaultValue(schema.json, value) as T;
}

function defaultValue(json: JsonSchema, value: unknown): unknown {
  if (value === undefined) return undefined;
  if (json.type === "object" && json.properties && isPlainObject(value)) {
    const out: Record<string, unknown> = { ...value };
    for (const [name, prop] of Object.entries(json.properties)) {
      if (out[name] === undefined && prop.default !== undefined) out[name] = structuredClone(prop.default);
      if (out[name] !== undefined) out[name] = defaultValue(prop, out[name]);
    }
    return out;
  }
  if (json.type === "object" && json.additionalProperties && isPlainObject(value)) {
    const props = json.additionalProperties;
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, defaultValue(props, v)]));
  }
  if (json.type === "array" && json.items && Array.isArray(value)) {
    const items = json.items;
    return value.map((v) => defaultValue(items, v));
  }
  return value;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
