#!/bin/sh
# /sbin/init of the test-bed AMI: report facts on the serial console in a
# machine-readable form, then power off. Each value is base64 so that no
# content (keys, user data, odd bytes) can break the line format.
PATH=/bin:/sbin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
# Kernel messages must not interleave with report lines.
echo 1 > /proc/sys/kernel/printk
[ -s /etc/hostname ] && hostname -F /etc/hostname

out=/dev/ttyS0
kv() { printf 'AMIBOOT-REPORT %s %s\n' "$1" "$(printf %s "$2" | base64 -w0)" > $out; }
kvfile() { [ -e "$2" ] && printf 'AMIBOOT-REPORT %s %s\n' "$1" "$(base64 -w0 < "$2")" > $out; }

echo "AMIBOOT-REPORT-BEGIN" > $out
kv cmdline "$(cat /proc/cmdline)"
kv kernel "$(uname -r)"
kv hostname "$(hostname)"
kv modules "$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
kv root_df_kb "$(df -k / | tail -n 1 | awk '{print $2, $3, $4}')"
kv root_dev "$(awk '$2 == "/" {print $1, $3, $4}' /proc/mounts | tail -n 1)"
kv ssh_dir "$(stat -c '%a %u %g %F' /root/.ssh 2>/dev/null)"
kv authorized_keys_stat "$(stat -c '%a %u %g %F' /root/.ssh/authorized_keys 2>/dev/null)"
kvfile authorized_keys /root/.ssh/authorized_keys
kvfile shadow_root "/etc/shadow"
kvfile user_data /var/lib/cloud/seed/nocloud/user-data
kvfile meta_data /var/lib/cloud/seed/nocloud/meta-data
kvfile etc_hostname /etc/hostname
kv disk_bytes "$(( $(cat /sys/block/vda/size 2>/dev/null || echo 0) * 512 ))"
# amiboot.report=/a,/b on the command line: those paths' stat (of the
# path itself, a link not followed) and contents.
for arg in $(cat /proc/cmdline); do
    case "$arg" in amiboot.report=*)
        for p in $(echo "${arg#amiboot.report=}" | tr ',' ' '); do
            kv "stat:$p" "$(stat -c '%a %u %g %F' "$p" 2>/dev/null)"
            [ -L "$p" ] || kvfile "file:$p" "$p"
        done ;;
    esac
done
kv net "$(ls /sys/class/net | tr '\n' ' ')"
echo "AMIBOOT-REPORT-END" > $out
sync
poweroff -f
