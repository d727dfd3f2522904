#!/bin/sh
# /init of the throwaway VM: load the modules, mount the host's root read-only over virtio-9p, chroot into it and
# run the job the host left in the results share. Every failure ends in a poweroff with the reason on the console,
# so the host never waits for a guest that is stuck.
/bin/busybox --install -s /bin
export PATH=/bin

die() {
    echo "ipvs-vm: FAILED: $*"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# /modules: one module a line, with its parameters, in load order (written by image.py).
while read -r module parameters; do
    # shellcheck disable=SC2086 # parameters are words
    modprobe "$module" $parameters || die "modprobe $module $parameters"
done </modules

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host || die "mount host root"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /results || die "mount results share"

# The host's /tmp stays visible (read-only): a checkout may live there. The job gets TMPDIR on /run instead.
for fs in proc:/proc sysfs:/sys devtmpfs:/dev tmpfs:/run; do
    mount -t "${fs%%:*}" "${fs%%:*}" "/host${fs#*:}" || die "mount ${fs#*:} in the chroot"
done
mkdir -p /host/dev/pts /host/dev/shm /host/run/ipvs-vm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount --bind /results /host/run/ipvs-vm || die "bind the results share"

echo "ipvs-vm: kernel $(uname -r) ready, running the job"
chroot /host /bin/sh /run/ipvs-vm/job.sh >/results/job.log 2>&1
echo "$?" >/results/exit-code
sync
echo "ipvs-vm: job finished with exit code $(cat /results/exit-code)"
umount /host/run/ipvs-vm
umount /results
poweroff -f
