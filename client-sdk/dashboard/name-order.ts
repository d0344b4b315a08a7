/**
 * Orders light cards as people read names: digit runs compare as numbers,
 * so "Lamp 2" comes before "Lamp 10".
 */
export function compareSortKeys(a: string, b: string): number {
  return a.localeCompare(b, undefined, { numeric: true });
}
