import { array, dateTime, enumOf, type Infer, integer, object, optional, string } from "./schema.js";

// metav1.Condition, as a schema so both CRDs embed the same shape.
export const conditionSchema = object({
  type: string({ maxLength: 316 }),
  status: enumOf(["True", "False", "Unknown"]),
  reason: string({ maxLength: 1024 }),
  message: optional(string({ maxLength: 32768 })),
  lastTransitionTime: dateTime(),
  observedGeneration: optional(integer({ format: "int64", minimum: 0 })),
});

export const conditionsSchema = array(conditionSchema, {
  listType: "map",
  listMapKeys: ["type"],
  description: "Latest observations of the object's state (metav1.Condition).",
});

export type Condition = Infer<typeof conditionSchema>;
export type ConditionStatus = Condition["status"];

export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  reason: string;
  message?: string;
}

/**
 * Return `conditions` with `next` set. `lastTransitionTime` only moves when the status flips, so
 * "how long has it been unavailable" stays answerable; reason/message always take the new value.
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  next: ConditionInput,
  generation: number | undefined,
  now: Date,
): Condition[] {
  const list = [...(conditions ?? [])];
  const index = list.findIndex((c) => c.type === next.type);
  const previous = index >= 0 ? list[index] : undefined;
  const condition: Condition = {
    type: next.type,
    status: next.status,
    reason: next.reason,
    message: next.message ?? "",
    lastTransitionTime:
      previous && previous.status === next.status ? previous.lastTransitionTime : now.toISOString(),
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
  };
  if (index >= 0) list[index] = condition;
  else list.push(condition);
  return list;
}

export function getCondition(
  conditions: readonly Condition[] | undefined,
  type: string,
): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

export function isConditionTrue(conditions: readonly Condition[] | undefined, type: string): boolean {
  return getCondition(conditions, type)?.status === "True";
}
