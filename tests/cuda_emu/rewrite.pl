#!/usr/bin/perl
# rewrite.pl — turns a .cu file into C++ for the CPU emulator (tests/cuda_emu/README.md); every rewrite keeps the line
# count, and a #line directive makes diagnostics and sanitizer reports name the .cu file and its lines.
#   k<<<grid, block[, smem[, stream]]>>>(args) -> emu_launch("k", k, emu_config(grid, block, ...), args)
#   __shared__ T name[N];        -> static T name[N]; emu_shared_register(&name, sizeof name);  (filled, size-checked)
#   extern __shared__ T name[];  -> T *const name = (T *)emu_dynamic_shared();
# Usage: rewrite.pl in.cu > out.cpp
use strict;
use warnings;

my $path = $ARGV[0] or die "usage: rewrite.pl file.cu\n";
open(my $fh, '<', $path) or die "rewrite.pl: cannot read $path: $!\n";
local $/;
my $src = <$fh>;
close $fh;

# dynamic shared memory: the launch's buffer
$src =~ s{\bextern\s+__shared__\s+([^;]*?)\s*\b(\w+)\s*\[\s*\]\s*;}{
    my ($type, $name) = ($1, $2);
    $type =~ s/__align__\s*\(\s*\d+\s*\)\s*//g;
    "$type *const $name = ($type *)emu_dynamic_shared();"
}ge;

# static shared memory declared at the start of a line (the rest fall back to `#define __shared__ static`)
$src =~ s{^([ \t]*)(?:static\s+)?__shared__\s+([^;=\n]*?)\b(\w+)\s*((?:\[[^\]\n]*\])*)\s*;}
         {$1static $2$3$4; emu_shared_register(&$3, sizeof $3);}gm;

# launches; the configuration may span lines (its newlines are kept)
$src =~ s{((?:\w+::)*[A-Za-z_]\w*(?:\s*<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\((\s*\))?}{
    my ($kernel, $cfg, $empty) = ($1, $2, $3);
    (my $label = $kernel) =~ s/\s+/ /g;
    "emu_launch(\"$label\", $kernel, emu_config($cfg)" . (defined $empty ? "$empty" : ", ")
}gse;

print "#line 1 \"$path\"\n", $src;
