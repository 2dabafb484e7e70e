import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";

/**
 * What a method accepts for a request message: a plain object with any subset of its
 * fields (camelCase), e.g. `{ keyId: "..." }`; unset fields take their proto defaults.
 */
export type Init<Schema extends DescMessage> = MessageInitShape<Schema>;

/** The fields of a request other than `omitted`, e.g. a list's filters without paging. */
export type InitWithout<Schema extends DescMessage, Omitted extends string> = Omit<
  MessageInitShape<Schema>,
  "$typeName" | Omitted
>;
