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

release=$(uname -r)
# busybox's modprobe ignores softdeps: libcrc32c (needed by ip_vs) only loads once a crc32c implementation is there.
for module in virtio_pci 9pnet_virtio 9p crc32c_generic ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh veth; do
    modprobe "$module" || die "modprobe $module"
done
# No stray dummy0: the tests create exactly the dummy devices they want.
modprobe dummy numdummies=0 || die "modprobe dummy"

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

echo "ipvs-vm: kernel $release ready, running the job"
chroot /host /bin/sh /run/ipvs-vm/job.sh >/results/job.log 2>&1
echo "$?" >/results/exit-code
sync
echo "ipvs-vm: job finished with exit code $(cat /results/exit-code)"
umount /host/run/ipvs-vm
umount /results
poweroff -f
