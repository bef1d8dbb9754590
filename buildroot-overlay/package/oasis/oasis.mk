################################################################################
#
# oasis
#
################################################################################

# Built from the oasis workspace this br2-external tree lives in: Buildroot rsyncs it into
# the build directory. A developer's own build output is left out (it is large, and built
# for the host).
OASIS_VERSION = 0.1.0
OASIS_SITE = $(BR2_EXTERNAL_OASIS_PATH)/..
OASIS_SITE_METHOD = local
OASIS_LICENSE = Apache-2.0
OASIS_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /.cache

# The cargo infrastructure vendors a crate's dependencies as a post-process of its download
# step, and builds with --offline. A local site has no download step, so vendor here, from
# Cargo.lock, before building. The old source replacement goes first: cargo vendor cannot
# read the registry through a replacement that points at the directory it is rewriting.
define OASIS_CARGO_VENDOR
	rm -f $(@D)/.cargo/config.toml
	mkdir -p $(@D)/.cargo
	cd $(@D) && $(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		cargo vendor --locked VENDOR > $(@D)/.cargo/config.toml.new
	mv $(@D)/.cargo/config.toml.new $(@D)/.cargo/config.toml
endef
OASIS_PRE_BUILD_HOOKS += OASIS_CARGO_VENDOR

# The workspace root is a virtual manifest: build the chosen members only.
OASIS_CRATES = \
	$(if $(BR2_PACKAGE_OASIS_APPLIANCE),oasis) \
	$(if $(BR2_PACKAGE_OASIS_AGENT),oasis-agent)
OASIS_BINS = \
	$(if $(BR2_PACKAGE_OASIS_APPLIANCE),oasis) \
	$(if $(BR2_PACKAGE_OASIS_AGENT),oasis-agent)
OASIS_CARGO_BUILD_OPTS = $(foreach crate,$(OASIS_CRATES),--package $(crate))

# `cargo install --path ./`, the infrastructure's install step, refuses a virtual manifest:
# install the binaries the build step made.
OASIS_TARGET_OUT = $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

define OASIS_INSTALL_TARGET_CMDS
	$(foreach bin,$(OASIS_BINS),
		$(INSTALL) -D -m 0755 $(OASIS_TARGET_OUT)/$(bin) $(TARGET_DIR)/usr/bin/$(bin)
	)
endef

$(eval $(cargo-package))
