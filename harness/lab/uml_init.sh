#!/bin/sh
# PID 1 of a kpbench User-Mode Linux guest (booted by harness/lab/uml.py).
# The root is the host's filesystem, read-only (hostfs). Inputs come from the kernel command
# line as environment variables, and from files in the control dir:
#   KPBENCH_CTL      host dir (inside a mounted dir) holding cmd.sh, env.sh; receives
#                    exit_status, modules_missing, stderr.log, boot_uptime
#   KPBENCH_MOUNTS   colon-separated host dirs to mount read-write at the same path
#   KPBENCH_MODULES  comma-separated modules to load
# The command's stdout goes to /dev/tty1, which is the linux.uml process's stdout.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C.UTF-8

finish() {
    sync
    poweroff -f
    sleep 5
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null

mods=$(echo "$KPBENCH_MODULES" | tr ',' ' ')
if [ -e /proc/modules ]; then  # a kernel with loadable modules (Debian's); kpbench's has them built in
    mkdir -p /tmp/mods/lib/modules
    ln -s "/usr/lib/uml/modules/$(uname -r)" "/tmp/mods/lib/modules/$(uname -r)"
    # the kernel's own module autoloading (IPVS schedulers, xt matches, nft expressions, ipset types,
    # link kinds) and iptables' userspace loading both run /proc/sys/kernel/modprobe: point it there
    printf '#!/bin/sh\nexec /sbin/modprobe -d /tmp/mods "$@"\n' >/tmp/mods/modprobe
    chmod 755 /tmp/mods/modprobe
    echo /tmp/mods/modprobe >/proc/sys/kernel/modprobe
    # shellcheck disable=SC2086
    [ -n "$mods" ] && modprobe -a -d /tmp/mods $mods 2>/tmp/modprobe.err
fi

IFS_SAVE=$IFS; IFS=:
for d in $KPBENCH_MOUNTS; do
    [ -n "$d" ] || continue
    mkdir -p "$d" && mount -t hostfs none "$d" -o "$d" || echo "kpbench-init: cannot mount $d" >/dev/tty0
done
IFS=$IFS_SAVE

ctl="$KPBENCH_CTL"
if [ -z "$ctl" ] || [ ! -f "$ctl/cmd.sh" ]; then
    echo "kpbench-init: no control dir ($ctl)" >/dev/tty0
    finish
fi

missing=""
for m in $mods; do
    n=$(echo "$m" | tr '-' '_')
    [ -d "/sys/module/$n" ] || missing="$missing $n"
done
echo "$missing" >"$ctl/modules_missing"
cp /tmp/modprobe.err "$ctl/modprobe.err" 2>/dev/null

ip link set lo up 2>/dev/null
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null
cut -d' ' -f1 /proc/uptime >"$ctl/boot_uptime"

[ -f "$ctl/env.sh" ] && . "$ctl/env.sh"
sh "$ctl/cmd.sh" </dev/null >/dev/tty1 2>"$ctl/stderr.log"
echo $? >"$ctl/exit_status.tmp" && mv "$ctl/exit_status.tmp" "$ctl/exit_status"
finish
