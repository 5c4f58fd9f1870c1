# From package/kernel/linux/modules/fs.mk.

FS_MENU:=Filesystems

# CONFIG_SQUASHFS_XZ=y is a bool used only inside fs/squashfs/: extmod builds squashfs.ko through
# a configuration variant that enables it, and the kernel's .config keeps it unset.
define KernelPackage/fs-squashfs
  SUBMENU:=$(FS_MENU)
  TITLE:=SquashFS 4.0 filesystem support
  KCONFIG:=CONFIG_SQUASHFS \
	CONFIG_SQUASHFS_XZ=y
  FILES:=$(LINUX_DIR)/fs/squashfs/squashfs.ko
  AUTOLOAD:=$(call AutoLoad,30,squashfs,1)
endef

define KernelPackage/fs-squashfs/description
 Kernel module for SquashFS 4.0 support
endef

$(eval $(call KernelPackage,fs-squashfs))
