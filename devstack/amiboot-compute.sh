#!/bin/bash
# What a compute node needs for nova-amiboot, in one place: the devstack
# plugin (devstack/plugin.sh) and the one-host cloud (tools/cloud) both
# source this file, so both configure the driver the same way.
#
# Functions only; nothing runs when sourced. Each caller applies the
# settings with its own ini tool (devstack's iniset, or tools/cloud's).

# amiboot_compute_settings [PRIVSEP_HELPER NOVA_CONF]
#   Print "section option value" lines for nova.conf of a compute node.
#   With PRIVSEP_HELPER (a privsep-helper path), also point the driver's
#   own privsep contexts at it, for hosts where privsep cannot start its
#   helper through "sudo nova-rootwrap" (no sudo, or a virtualenv that
#   sudo's secure_path misses).
#   Variables: NOVA_AMIBOOT_DRIVER, NOVA_AMIBOOT_INJECT_KEY,
#   NOVA_AMIBOOT_ALLOWED_BOOT_PARAMS (defaults below).
function amiboot_compute_settings {
    local helper=${1:-}
    local conf=${2:-}
    local group
    echo "DEFAULT compute_driver" \
        "${NOVA_AMIBOOT_DRIVER:-amiboot.AmibootLibvirtDriver}"
    echo "libvirt images_type qcow2"
    echo "amiboot inject_key ${NOVA_AMIBOOT_INJECT_KEY:-True}"
    echo "amiboot allowed_boot_params" \
        "${NOVA_AMIBOOT_ALLOWED_BOOT_PARAMS:-quiet,debug,loglevel,console,net.ifnames,amiboot.*}"
    if [[ -n "$helper" ]]; then
        # nova's and os-brick's contexts, and the driver's own two.
        for group in nova_sys_admin privsep_osbrick vif_plug_ovs_privileged \
            nova_amiboot_privileged nova_amiboot_privileged_net; do
            echo "$group helper_command $helper --config-file $conf"
        done
    fi
}

# amiboot_rootwrap_filters
#   Print the nova-rootwrap filter file that admits the driver's privsep
#   contexts (nova's shipped filters admit only nova's and os-brick's);
#   install it as <rootwrap filters_path>/amiboot.filters.
function amiboot_rootwrap_filters {
    cat "$(dirname "${BASH_SOURCE[0]}")/../etc/nova/rootwrap.d/amiboot.filters"
}

# amiboot_compute_command NOVA_CONF [BIN_DIR]
#   The command line of the compute service.
function amiboot_compute_command {
    local bin=${2:+$2/}
    echo "${bin}nova-compute-amiboot --config-file $1"
}

# amiboot_upload_triplet NAME KERNEL RAMDISK ROOT [--property K=V ...]
#   Upload an AKI/ARI/AMI triplet with "openstack image create" (public):
#   NAME-kernel, NAME-ramdisk and the AMI NAME linked to them by
#   kernel_id/ramdisk_id. Prints the AMI's id. Images that exist already
#   (by name) are kept, so a second run uploads nothing.
#   Variable: NOVA_AMIBOOT_ARI_PROVISION, the ARI's amiboot_provision
#   property: "guest" (the default) for an ARI the project built, which
#   applies the per-instance provisioning layer at first boot; empty for
#   an ARI that does not (the host then grows and keys the instance).
function amiboot_upload_triplet {
    local name=$1 kernel=$2 ramdisk=$3 root=$4
    shift 4
    local aki ari provision=${NOVA_AMIBOOT_ARI_PROVISION-guest}
    local ari_opts=()
    [[ -n "$provision" ]] && \
        ari_opts=(--property "amiboot_provision=$provision")
    aki=$(amiboot_upload_image "$name-kernel" aki "$kernel")
    ari=$(amiboot_upload_image "$name-ramdisk" ari "$ramdisk" \
        "${ari_opts[@]}")
    amiboot_upload_image "$name" ami "$root" --property kernel_id="$aki" \
        --property ramdisk_id="$ari" "$@"
}

# amiboot_upload_image NAME FORMAT FILE [openstack image create options]
#   Upload FILE as a public image NAME of disk and container format FORMAT
#   (aki, ari or ami) unless an image NAME exists. Prints its id.
function amiboot_upload_image {
    local name=$1 fmt=$2 file=$3 id
    shift 3
    id=$(openstack image list --name "$name" -f value -c ID | head -n 1)
    if [[ -z "$id" ]]; then
        id=$(openstack image create --disk-format "$fmt" \
            --container-format "$fmt" --file "$file" --public "$@" \
            -f value -c id "$name")
    fi
    echo "$id"
}
