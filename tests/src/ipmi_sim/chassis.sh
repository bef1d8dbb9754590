#!/bin/bash
# The chassis of a machine whose BMC is OpenIPMI's ipmi_sim (its `chassis_control` program):
# power is a QEMU process, the boot device a file, and the next boot consumes a "pxe" once.
#
#   chassis.sh DIR get power boot
#   chassis.sh DIR set power 1|0   set boot pxe|none|default|cdrom|bios   set reset 1
#
# DIR/fault, when present, makes the chassis misbehave as real ones do: "refuse-power-on" (power
# on fails; ipmi_sim answers "unspecified error"), "ignore-boot-device" (the boot device is
# accepted and dropped).
#
# ipmi_sim waits for this script (popen) and reads its standard output to its end, so QEMU
# daemonizes with its output in DIR/qemu.log. Every call is appended to DIR/chassis.log.
set -u
dir=$1 op=$2
shift 2
pidfile=$dir/qemu.pid
fault=$(cat "$dir/fault" 2>/dev/null)
echo "$op $*" >>"$dir/chassis.log"

# The QEMU of this chassis runs: its pid file names a live process (not a zombie) whose command
# line carries that pid file, so a reused pid is not mistaken for it.
running() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    grep -qaF -- "$pidfile" "/proc/$pid/cmdline" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

start() {
    local boot=() machine=()
    if [ "$(cat "$dir/boot" 2>/dev/null)" = pxe ]; then
        boot=(-boot once=n)
        echo none >"$dir/boot"
        echo "event: this boot is from the network, once" >>"$dir/chassis.log"
    fi
    mapfile -t machine <"$dir/machine.args"
    qemu-system-x86_64 "${machine[@]}" "${boot[@]}" \
        -chardev "socket,id=ipmi0,host=127.0.0.1,port=$(cat "$dir/vmport"),reconnect=1" \
        -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0 \
        -pidfile "$pidfile" -daemonize </dev/null >>"$dir/qemu.log" 2>&1
}

stop() {
    local pid
    running || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 50); do
        running || return 0
        sleep 0.1
    done
    kill -KILL "$pid"
}

case $op in
get)
    for parm; do
        case $parm in
        power) if running; then echo power:1; else echo power:0; fi ;;
        boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
        *) echo "no such parameter: $parm"; exit 1 ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        parm=$1 val=$2
        shift 2
        case $parm in
        power)
            if [ "$val" = 0 ]; then
                stop
            elif [ "$fault" = refuse-power-on ]; then
                echo "simulated fault: this chassis does not power on"
                exit 1
            else
                running || start
            fi
            ;;
        reset) stop && start ;;
        boot) [ "$fault" = ignore-boot-device ] || echo "$val" >"$dir/boot" ;;
        *) echo "not simulated: $parm"; exit 1 ;;
        esac
    done
    ;;
*) echo "unknown operation: $op"; exit 1 ;;
esac
