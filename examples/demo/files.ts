/**
 * The few filesystem questions the demo asks, with Deno's errors turned into answers.
 * @module
 */

/** Joins a directory and a name with "/" (accepted everywhere, Windows included). */
export function joinPath(dir: string, name: string): string {
  return dir === "" ? name : /[\\/]$/.test(dir) ? dir + name : `${dir}/${name}`;
}

/** Whether `path` is a regular file (false when missing or unreadable). */
export async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Whether `path` is a directory (false when missing or unreadable). */
export async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
