#!/bin/bash
# devstack plugin for nova-amiboot: the AMI boot method for nova-compute.

# System packages: devstack installs devstack/files/bindep.txt (a copy of
# the top-level bindep.txt) with the default profile before this runs.

# What a compute node needs (nova.conf settings, the rootwrap filter, the
# compute command, the image upload) comes from one script, which
# tools/cloud uses as well.
source $NOVA_AMIBOOT_DIR/devstack/amiboot-compute.sh

function install_nova_amiboot {
    setup_develop $NOVA_AMIBOOT_DIR
    # Host tools on untrusted bytes run sandboxed as this user when the
    # driver's privileged side runs them ([amiboot] tool_user).
    if ! getent passwd amiboot-tool >/dev/null; then
        sudo useradd --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin amiboot-tool
    fi
}

# Everything but compute_driver (set when n-cpu restarts, below).
function configure_nova_amiboot {
    local conf section option value
    for conf in $NOVA_CONF $NOVA_CPU_CONF; do
        [[ -f $conf ]] || continue
        while read -r section option value; do
            [[ $option == compute_driver ]] && continue
            iniset $conf $section $option "$value"
        done < <(amiboot_compute_settings)
    done
    # n-cpu starts privsep-helper through sudo nova-rootwrap: admit the
    # driver's privsep contexts.
    amiboot_rootwrap_filters | sudo tee \
        $NOVA_CONF_DIR/rootwrap.d/amiboot.filters > /dev/null
}

# The stock nova-compute cannot load a driver from outside nova.virt, so
# n-cpu is restarted through nova-compute-amiboot, which registers ours as
# nova.virt.amiboot. Setting compute_driver before this point would make
# n-cpu's first start fail.
function start_nova_amiboot_compute {
    local conf
    for conf in $NOVA_CONF $NOVA_CPU_CONF; do
        [[ -f $conf ]] && iniset $conf DEFAULT compute_driver \
            $NOVA_AMIBOOT_DRIVER
    done
    stop_process n-cpu
    run_process n-cpu \
        "$(amiboot_compute_command $NOVA_CPU_CONF $NOVA_BIN_DIR)" \
        $LIBVIRT_GROUP
}

# A sample triplet from this host's kernel: the ARI and AMI come from the
# project's own builders.
function upload_nova_amiboot_sample {
    local work=$NOVA_AMIBOOT_WORK
    local kver
    local tree=$work/rootfs
    kver=$(uname -r)
    sudo rm -rf $work
    mkdir -p $tree/bin $tree/sbin $tree/etc $tree/dev $tree/proc \
        $tree/sys $tree/root $tree/tmp
    cp /bin/busybox $tree/bin/busybox
    ln -s ../bin/busybox $tree/sbin/init
    cat > $tree/etc/inittab <<INITTAB
::sysinit:/bin/busybox mount -t proc proc /proc
::respawn:/bin/busybox getty -L 115200 ttyS0 vt100
INITTAB
    sudo cp /boot/vmlinuz-$kver $work/vmlinuz
    sudo chmod 0644 $work/vmlinuz
    sudo $NOVA_BIN_DIR/amiboot image build-ari \
        --modules-dir /lib/modules/$kver $work/ari.img
    sudo $NOVA_BIN_DIR/amiboot image build-ami --from-dir $tree \
        $work/ami.img
    sudo chown $STACK_USER $work/ari.img $work/ami.img

    amiboot_upload_triplet $NOVA_AMIBOOT_SAMPLE_NAME $work/vmlinuz \
        $work/ari.img $work/ami.img
}

function cleanup_nova_amiboot {
    sudo rm -rf $NOVA_AMIBOOT_WORK
}

if [[ "$1" == "stack" && "$2" == "install" ]]; then
    echo_summary "Installing nova-amiboot"
    install_nova_amiboot
elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    echo_summary "Configuring nova-amiboot"
    configure_nova_amiboot
elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
    echo_summary "Starting nova-compute with nova-amiboot"
    if is_service_enabled n-cpu; then
        start_nova_amiboot_compute
    fi
    if [[ "$NOVA_AMIBOOT_SAMPLE" == "True" ]] && \
        is_service_enabled g-api; then
        upload_nova_amiboot_sample
    fi
fi

if [[ "$1" == "unstack" ]]; then
    stop_process n-cpu
fi

if [[ "$1" == "clean" ]]; then
    cleanup_nova_amiboot
fi
