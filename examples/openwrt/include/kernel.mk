# A stand-in for the parts of OpenWrt's include/kernel.mk (and rules.mk, target.mk) that
# KernelPackage definitions use: LINUX_DIR with the kernel's .config read as make variables,
# MODULES_SUBDIR, ARCH/BOARD/SUBTARGET/LINUX_KARCH, INSTALL_DIR/INSTALL_DATA, AutoLoad/AutoProbe,
# version_filter and KernelPackage itself. OpenWrt's own package/kernel/linux/modules/*.mk parse
# with it as they are. In a real OpenWrt tree the same Makefile.shim is included after kernel.mk,
# and KernelPackage's install step is what changes: the modules come from `extmod build`, and the
# kernel's .config is left alone instead of receiving every package's KCONFIG.

WORK ?= $(OUT)-work
EXTMOD ?= extmod

# Makefile.shim's settings. LINUX_DIR becomes the shim's view of the kernel build (the kernel's
# .config, modules.builtin and the modules it builds), so that `$(wildcard $(LINUX_DIR)/...ko)`
# in the recipes answers as in OpenWrt's built kernel tree; the source tree is EXTMOD_SRCTREE.
EXTMOD_KBUILD := $(abspath $(KBUILD))
EXTMOD_DIR := $(abspath $(WORK))
EXTMOD_INSTALL_DIR := $(abspath $(OUT))
EXTMOD_SRCTREE := $(abspath $(LINUX_DIR))
EXTMOD_VIEW := 1

# The target, from the kernel configuration unless given: x86/64, armsr/armv8, armsr/armv7
# (OpenWrt's names).
extmod_kcfg = $(shell grep -qx 'CONFIG_$(1)=y' '$(EXTMOD_KBUILD)/.config' 2>/dev/null && echo y)
ifeq ($(call extmod_kcfg,X86_64),y)
  ARCH ?= x86_64
  BOARD ?= x86
  SUBTARGET ?= 64
else ifeq ($(call extmod_kcfg,ARM64),y)
  ARCH ?= aarch64
  BOARD ?= armsr
  SUBTARGET ?= armv8
else ifeq ($(call extmod_kcfg,ARM),y)
  ARCH ?= arm
  BOARD ?= armsr
  SUBTARGET ?= armv7
else ifeq ($(call extmod_kcfg,X86_32),y)
  ARCH ?= i386
  BOARD ?= x86
  SUBTARGET ?= generic
endif
ifneq (,$(filter $(ARCH),i386 x86_64))
  LINUX_KARCH := x86
else ifneq (,$(filter $(ARCH),aarch64 aarch64_be))
  LINUX_KARCH := arm64
else
  LINUX_KARCH := $(ARCH)
endif

include $(TOPDIR)/../../Makefile.shim

override LINUX_DIR := $(EXTMOD_VIEW_DIR)
LINUX_KMOD_SUFFIX := ko
LINUX_VERSION := $(EXTMOD_RELEASE)

# rules.mk's helpers: words for $(subst) (i2c.mk's ModuleConfVar), and the install commands
# used by KernelPackage/<name>/install sections.
empty :=
space := $(empty) $(empty)
comma := ,
qstrip = $(strip $(subst ",,$(1)))
INSTALL_DIR := install -d -m0755
INSTALL_DATA := install -m0644
INSTALL_CONF := install -m0600
INSTALL_BIN := install -m0755

# OpenWrt's kernel.mk reads the kernel's .config as make variables (FILES and AUTOLOAD test
# $(CONFIG_PCI), $(CONFIG_IPV6), ...); OpenWrt's own string options default to empty.
-include $(LINUX_DIR)/.config
CONFIG_EXTERNAL_KERNEL_TREE ?= ""
CONFIG_KERNEL_GIT_CLONE_URI ?= ""
CONFIG_TARGET_$(BOARD) := y
CONFIG_TARGET_$(BOARD)_$(SUBTARGET) := y

# OpenWrt's KernelPackage, reduced to the part that matters here: evaluate KernelPackage/<name>
# and install its FILES and AUTOLOAD. Menus, descriptions and ipk metadata are left out.
define KernelPackage
$(call ExtmodKernelPackage,$(1))
endef
