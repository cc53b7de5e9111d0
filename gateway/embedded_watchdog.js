// Preloaded into the embedded pouchdb-server (node --require): it exits when the Python
// process that started it is gone, even if that process was killed with SIGKILL and
// could not stop it. The parent's pid comes in WALLABY_PARENT_PID.
"use strict";
const parent = Number(process.env.WALLABY_PARENT_PID || "0");
if (parent > 0) {
  const timer = setInterval(() => {
    let alive = process.ppid === parent;
    if (alive) {
      try {
        process.kill(parent, 0);
      } catch (error) {
        alive = false;
      }
    }
    if (!alive) process.exit(0);
  }, 500);
  timer.unref();
}
