; an int8 MXM tile: weights from MEM.W0..W31, activations from MEM.W32/W33, results written to MEM.W40..W43
.init MEM.W0 0 i8 fill 1
.init MEM.W32 1 i8 1 2 3
.queue MEM.W0
 READ 0, W0
.queue MEM.W1
 NOP 1
 READ 0, W1
.queue MEM.W2
 NOP 2
 READ 0, W2
.queue MEM.W3
 NOP 3
 READ 0, W3
.queue MEM.W4
 NOP 4
 READ 0, W4
.queue MEM.W5
 NOP 5
 READ 0, W5
.queue MEM.W6
 NOP 6
 READ 0, W6
.queue MEM.W7
 NOP 7
 READ 0, W7
.queue MEM.W8
 NOP 8
 READ 0, W8
.queue MEM.W9
 NOP 9
 READ 0, W9
.queue MEM.W10
 NOP 10
 READ 0, W10
.queue MEM.W11
 NOP 11
 READ 0, W11
.queue MEM.W12
 NOP 12
 READ 0, W12
.queue MEM.W13
 NOP 13
 READ 0, W13
.queue MEM.W14
 NOP 14
 READ 0, W14
.queue MEM.W15
 NOP 15
 READ 0, W15
.queue MEM.W16
 NOP 16
 READ 0, W16
.queue MEM.W17
 NOP 17
 READ 0, W17
.queue MEM.W18
 NOP 18
 READ 0, W18
.queue MEM.W19
 NOP 19
 READ 0, W19
.queue MEM.W20
 NOP 20
 READ 0, W20
.queue MEM.W21
 NOP 21
 READ 0, W21
.queue MEM.W22
 NOP 22
 READ 0, W22
.queue MEM.W23
 NOP 23
 READ 0, W23
.queue MEM.W24
 NOP 24
 READ 0, W24
.queue MEM.W25
 NOP 25
 READ 0, W25
.queue MEM.W26
 NOP 26
 READ 0, W26
.queue MEM.W27
 NOP 27
 READ 0, W27
.queue MEM.W28
 NOP 28
 READ 0, W28
.queue MEM.W29
 NOP 29
 READ 0, W29
.queue MEM.W30
 NOP 30
 READ 0, W30
.queue MEM.W31
 NOP 31
 READ 0, W31
.queue MEM.W32
 NOP 34
 READ 1, W0
.queue MEM.W33
 NOP 35
 READ 1, W1
.queue MXM.W0.LW
 NOP 46
 LW.i8 W0, 2
.queue MXM.W0.IW
 NOP 47
 IW
.queue MXM.W0.ABC
 NOP 48
 ABC.i8 W0, 0
.queue MXM.W0.ACC
 NOP 88
 ACC.i32 0, E0
.queue MEM.W40
 NOP 94
 WRITE 0, E0
.queue MEM.W41
 NOP 93
 WRITE 0, E1
.queue MEM.W42
 NOP 92
 WRITE 0, E2
.queue MEM.W43
 NOP 91
 WRITE 0, E3
.dump MEM.W40 0 i32 1
