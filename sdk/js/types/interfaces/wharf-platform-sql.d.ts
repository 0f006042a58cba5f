declare module 'wharf:platform/sql@0.1.0' {
  /**
   * Which dialect the instance's database speaks.
   */
  export function dialect(): SqlDialect;
  /**
   * Run one statement that returns rows. Parameters bind to ?1, ?2, ...
   * At most 10,000 rows and 4 MiB per result.
   */
  export function query(statement: string, params: Array<Value>): Rows;
  /**
   * Run one statement that changes data or schema; returns rows changed.
   */
  export function execute(statement: string, params: Array<Value>): bigint;
  /**
   * Run statements in one transaction: all apply, or none does.
   */
  export function batch(statements: Array<[string, Array<Value>]>): BigUint64Array;
  export type Value = ValueNull | ValueInteger | ValueReal | ValueText | ValueBlob;
  export interface ValueNull {
    tag: 'null',
  }
  export interface ValueInteger {
    tag: 'integer',
    val: bigint,
  }
  export interface ValueReal {
    tag: 'real',
    val: number,
  }
  export interface ValueText {
    tag: 'text',
    val: string,
  }
  export interface ValueBlob {
    tag: 'blob',
    val: Uint8Array,
  }
  export interface Rows {
    columns: Array<string>,
    rows: Array<Array<Value>>,
  }
  /**
   * The SQL dialect of the instance's database.
   * # Variants
   * 
   * ## `"sqlite"`
   * 
   * ## `"postgres"`
   */
  export type SqlDialect = 'sqlite' | 'postgres';
}
