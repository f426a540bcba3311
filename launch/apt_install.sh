#!/usr/bin/env bash
# Best-effort Debian package install shared by launch/install_*.sh (source it, then call it):
#   apt_install NAME LOG_HINT PACKAGE...
# Installs PACKAGE... with apt-get (as root or through passwordless sudo; `apt-get update` and a retry when the
# first try fails). Prints one "[NAME] ..." line and returns 0 whatever happens: callers are optional set-ups whose
# tests skip with a reason when the packages are absent. LOG_HINT says what goes without them.
apt_install() {
  local name="$1" hint="$2"; shift 2
  local log="/tmp/xmodal-$name-install.log" sudo=""
  if ! command -v apt-get >/dev/null 2>&1; then echo "[$name] no apt-get here: $hint (install $* yourself)."; return 0; fi
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "[$name] not root and no passwordless sudo: $hint (\`sudo apt-get install -y $*\`)."; return 0
    fi
  fi
  local t0; t0=$(date +%s)
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 ||
     { $sudo apt-get update -q >>"$log" 2>&1 &&
       $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; }; then
    echo "[$name] installed $* in $(( $(date +%s) - t0 ))s."
  else
    echo "[$name] apt-get failed (log: $log): $hint."
  fi
  return 0
}
