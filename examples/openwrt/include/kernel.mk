# A stand-in for the parts of OpenWrt's include/kernel.mk that KernelPackage definitions use:
# LINUX_DIR, MODULES_SUBDIR, AutoLoad/AutoProbe, version_filter and KernelPackage itself. In a real
# OpenWrt tree the same Makefile.shim is included after kernel.mk, and KernelPackage's install
# step is what changes: the modules come from `extmod build`, and the kernel's .config is left
# alone instead of receiving every package's KCONFIG.

LINUX_DIR := $(abspath $(LINUX_DIR))
WORK ?= $(OUT)-work
EXTMOD ?= extmod

# Makefile.shim's settings.
EXTMOD_KBUILD := $(abspath $(KBUILD))
EXTMOD_DIR := $(abspath $(WORK))
EXTMOD_INSTALL_DIR := $(abspath $(OUT))

include $(TOPDIR)/../../Makefile.shim

LINUX_KMOD_SUFFIX := ko
LINUX_VERSION := $(EXTMOD_RELEASE)

# OpenWrt's KernelPackage, reduced to the part that matters here: evaluate KernelPackage/<name>
# and install its FILES and AUTOLOAD. Menus, descriptions and ipk metadata are left out.
define KernelPackage
$(call ExtmodKernelPackage,$(1))
endef
