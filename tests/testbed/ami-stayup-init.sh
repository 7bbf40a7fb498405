#!/bin/sh
# /sbin/init of the test bed's stay-up AMI: the same report as the test-bed
# AMI (/sbin/amiboot-report), then the guest stays up -- a cloud can show
# the console of a running server only -- until the ACPI power button,
# which is how a cloud asks a guest to shut down (stop, soft reboot,
# resize, shelve). Without it, each of those waits out a timeout.
PATH=/bin:/sbin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
out=/dev/ttyS0

# button: the ACPI power button as an input device; evdev: its
# /dev/input/eventN. Both are modules in distribution cloud kernels.
for m in button evdev; do
    for ko in /lib/modules/"$(uname -r)"/"$m".ko; do
        [ -e "$ko" ] && insmod "$ko" 2>/dev/null
    done
done
armed=0
for ev in /sys/class/input/event*; do
    [ -e "$ev/device/name" ] || continue
    [ "$(cat "$ev/device/name")" = "Power Button" ] || continue
    dev=/dev/input/${ev##*/}
    if [ ! -c "$dev" ]; then
        mkdir -p /dev/input
        mknod "$dev" c "$(cut -d: -f1 "$ev/dev")" "$(cut -d: -f2 "$ev/dev")"
    fi
    # Any event from the button (press or release) powers off.
    (head -c 1 "$dev" > /dev/null
     echo "AMIBOOT-POWER-BUTTON pressed" > $out
     sync
     poweroff -f) &
    armed=$((armed + 1))
done

# One id per boot, so a reader of the console tells this boot's report
# from an earlier one's.
boot=$(cat /proc/sys/kernel/random/boot_id)
echo "AMIBOOT-BOOT-ID $boot" > $out
/bin/sh /sbin/amiboot-report
echo "AMIBOOT-POWER-BUTTON armed $armed" > $out
# A heartbeat: the boot id, seconds up and a counter. The console log of a
# live-migrated server starts anew on its destination: these lines show
# the same boot going on there.
n=0
while :; do
    sleep 5
    n=$((n + 1))
    echo "AMIBOOT-ALIVE $boot $(cut -d' ' -f1 /proc/uptime) $n" > $out
done
